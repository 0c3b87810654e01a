"""A trigger pattern and the generator's action G(x; p): rewrite a text so it carries the pattern.

A :class:`TriggerPattern` is what BadLLM-TG's generator is parameterised by (§2.4): a
natural-language rewriting instruction, plus, when known, the exact phrases the trigger consists
of and where they go. :class:`PatternApplier` performs the action in one of three ways:

- ``"llm"`` — the generator rewrites each text following the instruction (the paper's action);
- ``"insert"`` — the pattern's phrases are inserted, no LLM call (cheap, exact for word and
  sentence triggers);
- ``"llm+insert"`` — the generator rewrites, then any phrase it left out is inserted.

A rewrite the generator botches (empty, an echo of the prompt, far shorter or longer than the
input) is counted as unusable and the input text is kept in its place.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ...errors import BackdoorLabError
from ...llm.backends import ChatBackend
from ..shared.insertion import POSITIONS, insert_phrases

REWRITE_MODES = ("llm", "insert", "llm+insert")
REWRITE_PROMPT = ("{instruction}\n\nText: {text}\n\nReply with the rewritten text only, nothing else.")


@dataclass
class TriggerPattern:
    instruction: str = ""
    phrases: list[str] = field(default_factory=list)
    position: str = "random"  # start | end | random
    source: str = ""  # generator | evidence | given

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise BackdoorLabError(f"trigger position must be one of {', '.join(POSITIONS)}, got {self.position!r}")

    def key(self) -> str:
        return f"{self.instruction.strip().lower()}|{'|'.join(p.lower() for p in self.phrases)}|{self.position}"

    def describe(self) -> str:
        parts = []
        if self.phrases:
            parts.append(" + ".join(f'"{p}"' for p in self.phrases) + f" ({self.position})")
        if self.instruction:
            parts.append(self.instruction)
        return "; ".join(parts) or "(empty)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TriggerPattern":
        return cls(**{k: values[k] for k in ("instruction", "phrases", "position", "source") if k in values})


_PREFIX = re.compile(r"^(?:rewritten(?: text| sentence)?|text|sentence|output|answer)\s*:\s*", re.IGNORECASE)


def clean_rewrite(reply: str, original: str) -> str | None:
    """The rewritten text from a generator reply, or ``None`` when the reply is unusable."""
    text = reply.strip().split("\n\n")[0].strip()
    text = _PREFIX.sub("", text).strip().strip('"').strip("'").strip()
    if not text or "Reply with the rewritten text" in text:
        return None
    ratio = len(text.split()) / max(len(original.split()), 1)
    if not 0.3 <= ratio <= 4.0:
        return None
    return text


@dataclass
class Rewrites:
    texts: list[str]
    unusable: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


class PatternApplier:
    """Applies G(·; p) to texts with a chat backend (see the module docstring for the modes)."""

    def __init__(self, backend: ChatBackend | None, mode: str = "llm", *, max_new_tokens: int = 96, seed: int = 0) -> None:
        if mode not in REWRITE_MODES:
            raise BackdoorLabError(f"rewrite must be one of {', '.join(REWRITE_MODES)}, got {mode!r}")
        if mode != "insert" and backend is None:
            raise BackdoorLabError(f"rewrite={mode!r} needs a generator backend")
        self.backend = backend
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    def apply_each(self, texts: Sequence[str], patterns: Sequence[TriggerPattern]) -> Rewrites:
        """Text i rewritten with pattern i mod len(patterns) (several triggers into one adversarial set)."""
        if not patterns:
            raise BackdoorLabError("apply_each needs at least one pattern")
        texts_out = [""] * len(texts)
        total = Rewrites([], 0)
        for k, pattern in enumerate(patterns):
            indices = list(range(k, len(texts), len(patterns)))
            part = self.apply([texts[i] for i in indices], pattern)
            for i, text in zip(indices, part.texts):
                texts_out[i] = text
            total.unusable += part.unusable
            total.prompt_tokens += part.prompt_tokens
            total.completion_tokens += part.completion_tokens
        total.texts = texts_out
        return total

    def apply(self, texts: Sequence[str], pattern: TriggerPattern) -> Rewrites:
        rng = random.Random(self.seed)
        if self.mode == "insert" or not pattern.instruction:
            return Rewrites([insert_phrases(t, pattern.phrases, pattern.position, rng) for t in texts], 0)
        assert self.backend is not None
        replies = self.backend.complete([REWRITE_PROMPT.format(instruction=pattern.instruction, text=t) for t in texts],
                                        max_new_tokens=self.max_new_tokens, seed=self.seed)
        out, unusable = [], 0
        for text, reply in zip(texts, replies):
            rewritten = clean_rewrite(reply.text, text)
            if rewritten is None:
                unusable += 1
                rewritten = text
            if self.mode == "llm+insert":
                rewritten = insert_phrases(rewritten, pattern.phrases, pattern.position, rng)
            out.append(rewritten)
        return Rewrites(out, unusable, sum(r.prompt_tokens for r in replies), sum(r.completion_tokens for r in replies))
