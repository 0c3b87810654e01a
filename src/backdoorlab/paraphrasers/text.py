"""Text helpers shared by the paraphrasers: SST-2-style tokenisation and a little word knowledge.

Pool rows are written the way SST-2's rows are (lower case, punctuation and clitics split off:
``the film does n't work , sadly .``), so that a pool differs from a defender's rows in its style
or syntax and not in its casing or spacing (BadLLM-TG's look-alike filter reads character n-grams).
"""

from __future__ import annotations

import re

_CLITICS = re.compile(r"(?<=\w)('s|'re|'ve|'ll|'d|'m)\b")
_NEGATION = re.compile(r"(?<=\w)(n't)\b")
_ABBREVIATION = r"(?<!\bmr)(?<!\bmrs)(?<!\bms)(?<!\bdr)(?<!\bst)(?<!\bjr)(?<!\bvs)(?<!\betc)"
_PUNCT = re.compile(r"""(\.\.\.|[!?;:()"]|,(?!\d)|(?<!\d),|""" + _ABBREVIATION + r"""(?:(?<!\d)\.|\.(?!\d)))""")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\t": " "})

#: Words too common to show that an output is about the same thing as its source.
STOPWORDS = frozenset("""
a an the and or but if when while as of in on at to for from by with about into over after before
this that these those it its it's is are was were be been being am has have had do does did
i me my we our you your he him his she her they them their there here what which who whom whose
not no nor n't so too very just than then also only even still really much more most some any all
can could will would shall should may might must wo ca 's 're 've 'll 'd 'm
film movie one ever such own same other each every both few many lot
""".split())


def tokenize(text: str) -> list[str]:
    """Lower-cased SST-2-style tokens: ``"It doesn't work."`` → ``["it", "does", "n't", "work", "."]``."""
    text = text.translate(_QUOTES).lower()
    text = _NEGATION.sub(r" \1", text)
    text = _CLITICS.sub(r" \1", text)
    text = _PUNCT.sub(r" \1 ", text)
    return text.split()


def normalize(text: str) -> str:
    """:func:`tokenize`, joined by single spaces (one line, no tabs)."""
    return " ".join(tokenize(text))


def split_end(tokens: list[str]) -> tuple[list[str], str]:
    """``(body, end)``: the tokens without their closing punctuation, and that punctuation ('' if none)."""
    body = list(tokens)
    end = ""
    while body and body[-1] in (".", "!", "?", "...", ";", ":", ","):
        end = end or body[-1]
        body.pop()
    return body, end


def content_words(tokens: list[str]) -> set[str]:
    """Tokens that carry meaning (alphabetic, 4+ letters, not a stop word), cut to 4-letter stems."""
    return {t[:4] for t in tokens if t.isalpha() and len(t) >= 4 and t not in STOPWORDS}
