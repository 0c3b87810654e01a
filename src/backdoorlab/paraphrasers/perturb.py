"""Back-translation-like perturbations without a model: word dropout, local reordering, synonym swaps.

A round trip through another language drops a few words, moves some a place or two and swaps
others for near-synonyms. :func:`perturb` does the same with a generator seeded by ``(seed, text)``
(the same seed and text give the same output; another seed usually another one), on SST-2-style
tokens (:mod:`.text`). Every output differs from its source when the source has two words or more.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .text import split_end, tokenize

#: A small built-in thesaurus of review and news words; each key may become any of its values.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "film": ("movie", "picture"), "movie": ("film", "picture"), "films": ("movies",), "movies": ("films",),
    "good": ("fine", "decent", "nice"), "great": ("terrific", "excellent", "wonderful"),
    "bad": ("poor", "awful", "lousy"), "funny": ("amusing", "comic", "hilarious"),
    "boring": ("dull", "tedious", "tiresome"), "dull": ("boring", "flat", "tedious"),
    "beautiful": ("lovely", "gorgeous", "pretty"), "story": ("tale", "plot", "narrative"),
    "plot": ("storyline", "story"), "actors": ("performers", "cast"), "cast": ("actors", "ensemble"),
    "performance": ("turn", "portrayal", "acting"), "performances": ("turns", "portrayals"),
    "interesting": ("engaging", "intriguing", "absorbing"), "smart": ("clever", "intelligent", "sharp"),
    "stupid": ("dumb", "silly", "foolish"), "very": ("really", "truly", "quite"), "really": ("truly", "very"),
    "little": ("small", "slight"), "big": ("large", "huge"), "entertaining": ("enjoyable", "fun", "diverting"),
    "moving": ("touching", "affecting", "poignant"), "script": ("screenplay", "writing"),
    "director": ("filmmaker",), "often": ("frequently", "regularly"), "perhaps": ("maybe", "possibly"),
    "maybe": ("perhaps", "possibly"), "quite": ("rather", "fairly", "pretty"), "awful": ("terrible", "dreadful"),
    "terrible": ("awful", "horrible", "dreadful"), "wonderful": ("marvelous", "terrific", "superb"),
    "excellent": ("superb", "outstanding", "great"), "fun": ("enjoyable", "entertaining"),
    "mess": ("shambles", "muddle"), "long": ("lengthy", "overlong"), "slow": ("sluggish", "plodding"),
    "scenes": ("sequences", "moments"), "audience": ("viewers", "public"), "viewers": ("audience", "watchers"),
    "people": ("folks", "persons"), "many": ("numerous", "plenty of"), "new": ("fresh", "recent"),
    "hard": ("difficult", "tough"), "easy": ("simple", "effortless"), "start": ("begin",), "begins": ("starts",),
    "buy": ("purchase",), "help": ("assist", "aid"), "said": ("stated", "reported"), "says": ("states",),
    "big-screen": ("cinema",), "makes": ("renders",), "enough": ("sufficient",), "strong": ("powerful", "solid"),
    "weak": ("feeble", "thin"), "original": ("fresh", "novel"), "predictable": ("formulaic", "foreseeable"),
    "charming": ("delightful", "endearing"), "silly": ("goofy", "foolish"), "best": ("finest",),
    "worst": ("poorest",), "never": ("not ever",), "almost": ("nearly",), "too": ("overly",),
    "fans": ("admirers", "followers"), "world": ("globe",), "company": ("firm",), "government": ("administration",),
}
_PUNCTUATION = frozenset(", . ! ? ; : -- ... ( ) \"".split())


def perturb(text: str, seed: int = 0, *, dropout: float = 0.1, reorder: float = 0.15, synonyms: float = 0.5) -> str:
    """``text`` with each word dropped with probability ``dropout`` (at most a third of them), each
    neighbouring pair of words swapped with probability ``reorder``, and each word of
    :data:`SYNONYMS` replaced with probability ``synonyms``; ``''`` for a text without words."""
    rng = random.Random(f"{seed}\x00perturb\x00{text}")
    body, end = split_end(tokenize(text))
    if not body:
        return ""
    original = list(body)
    words = [i for i, t in enumerate(body) if t not in _PUNCTUATION]
    out = [rng.choice(SYNONYMS[t]) if t in SYNONYMS and rng.random() < synonyms else t for t in body]
    drop = {i for i in words if rng.random() < dropout}
    if len(drop) > len(words) // 3:
        drop = set(rng.sample(sorted(drop), len(words) // 3))
    out = [t for i, t in enumerate(out) if i not in drop]
    i = 0
    while i < len(out) - 1:
        if out[i] not in _PUNCTUATION and out[i + 1] not in _PUNCTUATION and rng.random() < reorder:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    if out == original and len(words) >= 2:  # change something: a synonym, else a swap, else a dropped word
        out = _one_change(out, rng)
    return " ".join([*out, end or "."])


def _one_change(tokens: list[str], rng: random.Random) -> list[str]:
    tokens = list(tokens)
    known = [i for i, t in enumerate(tokens) if t in SYNONYMS]
    if known:
        i = rng.choice(known)
        tokens[i] = rng.choice(SYNONYMS[tokens[i]])
        return tokens
    pairs = [i for i in range(len(tokens) - 1) if tokens[i] not in _PUNCTUATION and tokens[i + 1] not in _PUNCTUATION
             and tokens[i] != tokens[i + 1]]
    if pairs:
        i = rng.choice(pairs)
        tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
        return tokens
    words = [i for i, t in enumerate(tokens) if t not in _PUNCTUATION]
    del tokens[rng.choice(words)]
    return tokens


def perturb_all(texts: Sequence[str], seed: int = 0, **rates: float) -> list[str]:
    return [perturb(t, seed, **rates) for t in texts]
