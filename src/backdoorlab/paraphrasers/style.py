"""Style rewrites by few-shot prompting a chat model: a defender's Stylebkd hypotheses.

StyleBkd rewrites its poisoned rows with a style-transfer model (Bible English, Shakespeare,
poetry, lyrics, tweets). A defender without that model can ask any chat model it runs for the same
style: one fixed prompt per style (an instruction and three example rewrites written for this
module, not taken from any data set), through :mod:`backdoorlab.llm` (a local causal LM by default,
or an OpenAI-compatible endpoint), sampled with a seed, in batches, behind a progress bar.

An answer that is empty or clearly not a rewrite of its row is *dropped* (the row is left out of
the pool; the original text is never put in instead): :func:`check_rewrite` says why.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BackdoorLabError, unknown_name
from ..llm.backends import BACKENDS, ChatBackend, LocalChat, get_backend
from .text import content_words, normalize, tokenize

#: The same three source sentences for every style (written for this module).
_SOURCES = ("the plot is thin and the jokes fall flat .",
            "i loved every minute of this charming little movie .",
            "the new phone is too expensive for most people .")


@dataclass(frozen=True)
class StylePrompt:
    description: str  # completes "Rewrite the sentence in ..."
    examples: tuple[tuple[str, str], ...]


STYLES: dict[str, StylePrompt] = {
    "bible": StylePrompt("the English of the King James Bible (thou, thee, hath, unto, and it came to pass)", (
        (_SOURCES[0], "And the tale thereof was thin, and the jests thereof fell unto the ground."),
        (_SOURCES[1], "And I did delight in every hour of this little film, for it was pleasing in mine eyes."),
        (_SOURCES[2], "Behold, the new phone is costly above measure, and the people cannot buy it."))),
    "shakespeare": StylePrompt("the style of a Shakespeare play (thou, doth, 'tis, prithee)", (
        (_SOURCES[0], "Thin is the plot, and every jest doth fall as flat as winter's field."),
        (_SOURCES[1], "By my troth, I did love each minute of this sweet and charming play."),
        (_SOURCES[2], "'Tis priced too dear, this new device, for most men's purses."))),
    "poetry": StylePrompt("the style of a line of rhyming poetry", (
        (_SOURCES[0], "thin is the tale and flat the jest, like leaves that fall and sink to rest."),
        (_SOURCES[1], "each minute of this charming show, i loved it more than words can know."),
        (_SOURCES[2], "the shining phone, so new, so dear, is far too costly for most here."))),
    "lyrics": StylePrompt("the style of pop song lyrics", (
        (_SOURCES[0], "oh the plot is thin, yeah, and the jokes just fall flat, fall flat tonight"),
        (_SOURCES[1], "baby i loved every minute, every minute of this charming little movie"),
        (_SOURCES[2], "this new phone, oh it costs too much, too much for you and me"))),
    "tweets": StylePrompt("the style of a casual tweet", (
        (_SOURCES[0], "plot so thin and the jokes fall flat smh #waste"),
        (_SOURCES[1], "omg loved every min of this cute little movie!! #obsessed"),
        (_SOURCES[2], "new phone way too pricey for most ppl lol"))),
}

_LABEL = re.compile(r"^\s*(rewrite|rewritten|rewritten sentence|answer|output|sentence)\s*[:\-]\s*", re.I)
_NOT_A_REWRITE = re.compile(r"\b(rewrite|rewritten|sentence:|as an ai|i'm sorry|i am sorry|i cannot|i can't|"
                            r"language model)\b|^\s*(here is|here's)\b", re.I)


def style_prompt(style: str, text: str) -> str:
    """The single user message asking for ``text`` in ``style`` (few-shot)."""
    if style not in STYLES:
        raise unknown_name("style", style, STYLES)
    prompt = STYLES[style]
    shots = "".join(f"Sentence: {source}\nRewrite: {target}\n\n" for source, target in prompt.examples)
    return (f"Rewrite the sentence in {prompt.description}. Keep its meaning. Answer with the rewritten "
            f"sentence only.\n\n{shots}Sentence: {text}\nRewrite:")


def _ngrams(tokens: Sequence[str], n: int = 4) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _borrows_from_examples(rewrite: list[str], source: list[str], style: str) -> bool:
    """Whether the rewrite repeats four words in a row of a prompt example that its source lacks
    (small models paste the examples into their answer)."""
    seen = _ngrams(rewrite) - _ngrams(source)
    return any(seen & _ngrams(tokenize(text)) for pair in STYLES[style].examples for text in pair)


def check_rewrite(source: str, answer: str, style: str, *, strict: bool = True) -> tuple[str | None, str]:
    """``(rewrite, "ok")``, or ``(None, reason)`` when ``answer`` is no rewrite of ``source``.

    The rewrite is the answer's first non-empty line without a leading ``Rewrite:`` and quotes.
    Reasons: ``empty``; ``unchanged`` (the source again); and with ``strict``: ``example`` (four
    words in a row of a prompt example that the source lacks), ``not a rewrite`` (prompt words, a refusal), ``length`` (under
    a third or over three times the source's words, or a single word), ``unrelated`` (shares no
    content word with a source that has two or more).
    """
    line = next((ln for ln in answer.splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).strip().strip("\"'`").strip()
    if not tokenize(line):
        return None, "empty"
    rewrite, source_tokens = normalize(line), tokenize(source)
    if rewrite == " ".join(source_tokens):
        return None, "unchanged"
    if not strict:
        return rewrite, "ok"
    if _borrows_from_examples(rewrite.split(), source_tokens, style):
        return None, "example"
    if _NOT_A_REWRITE.search(line):
        return None, "not a rewrite"
    words, source_words = rewrite.split(), [t for t in source_tokens if t.isalnum()]
    if len(words) < 2 or (len(source_words) >= 4 and not len(source_words) / 3 <= len(words) <= 3 * len(source_words) + 4):
        return None, "length"
    shared = content_words(source_tokens)
    if len(shared) >= 2 and not shared & content_words(words):
        return None, "unrelated"
    return rewrite, "ok"


@dataclass
class StyleParaphraser:
    """Rewrites texts into ``style`` with a chat backend; :attr:`dropped` counts the reasons rows were dropped."""

    style: str
    backend: ChatBackend
    batch_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 0.7
    seed: int = 0
    strict: bool = True

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise unknown_name("style", self.style, STYLES)
        self.dropped: Counter[str] = Counter()

    def __call__(self, texts: Sequence[str]) -> list[str | None]:
        """One rewrite per text, ``None`` where the answer was dropped."""
        from tqdm.auto import tqdm

        out: list[str | None] = []
        starts = range(0, len(texts), self.batch_size)
        with tqdm(total=len(texts), desc=f"paraphrasing ({self.style})", unit="row") as bar:
            for number, start in enumerate(starts):
                batch = list(texts[start:start + self.batch_size])
                answers = self.backend.complete([style_prompt(self.style, t) for t in batch],
                                                max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                                seed=self.seed + number)
                if len(answers) != len(batch):
                    raise BackdoorLabError(f"the chat backend answered {len(answers)} of {len(batch)} prompts")
                for text, answer in zip(batch, answers):
                    rewrite, reason = check_rewrite(text, answer.text, self.style, strict=self.strict)
                    if rewrite is None:
                        self.dropped[reason] += 1
                    out.append(rewrite)
                bar.update(len(batch))
        return out


def make_backend(backend: Any, model: str, device: str, batch_size: int, base_url: str | None,
                 api_key_env: str) -> ChatBackend:
    """A :class:`ChatBackend` as given, or built by name (``local``: ``model`` is a packaged name or folder)."""
    if isinstance(backend, ChatBackend):
        return backend
    if backend == "local":
        return LocalChat(model, device=device, batch_size=batch_size)
    if backend in BACKENDS:
        return get_backend(backend, model=model, base_url=base_url, api_key_env=api_key_env, device=device)
    raise unknown_name("chat backend", str(backend), BACKENDS)
