"""Paraphrase pools from a defender's own rows: :func:`make_pool` and :func:`save_pool`.

A pool is the defender's classification rows rewritten under one style or syntax hypothesis, each
with its source row's label, in the file format BadLLM-TG's ``paraphrase_pools`` reads
(``sentence<TAB>label`` with a header, or ``text``/``label`` JSONL; see
:func:`backdoorlab.defenses.badllm_tg.paraphrase_probe.load_pools`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..data.records import Dataset, Example
from ..errors import BackdoorLabError, unknown_name
from ..fileio import write_text_atomic
from ..options import build
from .perturb import perturb
from .style import STYLES, StyleParaphraser, make_backend
from .syntactic import TEMPLATE_CHOICES, rewrite

METHODS = ("syntactic", "style", "perturb")
#: Every ``method`` string :func:`make_pool` takes.
METHOD_CHOICES = ("syntactic", *(f"syntactic:{t}" for t in TEMPLATE_CHOICES), *(f"style:{s}" for s in STYLES),
                  "perturb")
POOL_SUFFIXES = (".tsv", ".jsonl")


@dataclass
class SyntacticOptions:
    template: Literal["sbar", "cleft", "question", "imperative", "mixed"] = "sbar"  # shape; sbar: S(SBAR)(,)(NP)(VP)(.)


@dataclass
class PerturbOptions:
    dropout: float = 0.1  # probability of dropping each word (at most a third of them)
    reorder: float = 0.15  # probability of swapping each neighbouring pair of words
    synonyms: float = 0.5  # probability of replacing a word of the built-in thesaurus

    def __post_init__(self) -> None:
        for name in ("dropout", "reorder", "synonyms"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BackdoorLabError(f"perturb option {name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class StyleOptions:
    style: str = ""  # bible, shakespeare, poetry, lyrics or tweets (or method style:<style>)
    model: str = "smollm2-135m-instruct"  # packaged chat model or folder (local), model name (openai)
    backend: Any = "local"  # local, openai, or a ChatBackend object
    device: str = "auto"
    batch_size: int = 8
    max_new_tokens: int = 64  # longest answer, in tokens
    temperature: float = 0.7  # sampling temperature (0: greedy)
    strict: bool = True  # also drop answers that copy an example, refuse, or share no content word
    base_url: str | None = None  # openai backend: API root
    api_key_env: str = "OPENAI_API_KEY"  # openai backend: variable holding the key

    def __post_init__(self) -> None:
        if not self.style:
            raise BackdoorLabError("the style paraphraser needs a style: method style:<style>, one of "
                                   + ", ".join(sorted(STYLES)))
        if self.style not in STYLES:
            raise unknown_name("style", self.style, STYLES)
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise BackdoorLabError("style options batch_size and max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise BackdoorLabError(f"style option temperature must be >= 0, got {self.temperature}")


_OPTIONS = {"syntactic": SyntacticOptions, "style": StyleOptions, "perturb": PerturbOptions}
_SUFFIX_OPTION = {"syntactic": "template", "style": "style"}


def parse_method(method: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``("syntactic", {"template": "cleft", ...})`` from ``"syntactic:cleft"`` and the other options."""
    name, _, suffix = str(method).strip().partition(":")
    if name not in _OPTIONS:
        raise unknown_name("paraphrase method", method, METHOD_CHOICES)
    options = dict(options)
    if suffix:
        key = _SUFFIX_OPTION.get(name)
        if key is None:
            raise BackdoorLabError(f"paraphrase method {name!r} takes no ':{suffix}'; known paraphrase methods: "
                                   + ", ".join(METHOD_CHOICES))
        if key in options and options[key] != suffix:
            raise BackdoorLabError(f"method {method!r} and option {key}={options[key]!r} disagree; give one")
        choices = TEMPLATE_CHOICES if name == "syntactic" else tuple(STYLES)
        if suffix not in choices:
            raise unknown_name("style" if name == "style" else "syntactic template", suffix, choices)
        options[key] = suffix
    return name, options


def make_pool(rows: Dataset, method: str, *, seed: int = 0, max_rows: int | None = None, **options: Any) -> Dataset:
    """``rows`` paraphrased with ``method``, each kept row with its source's label.

    ``method``: ``syntactic`` (= ``syntactic:sbar``), ``syntactic:<cleft|question|imperative|mixed>``,
    ``style:<bible|shakespeare|poetry|lyrics|tweets>`` or ``perturb``; ``options`` are the method's
    (:class:`SyntacticOptions`, :class:`StyleOptions`, :class:`PerturbOptions`). ``max_rows``
    draws that many rows with ``seed`` first. Rows without a label or text are skipped; rows whose
    paraphrase failed (empty, not a rewrite) are dropped, and the pool's last note says how many.
    """
    name, options = parse_method(method, options)
    if rows.task != "classification":
        raise BackdoorLabError(f"paraphrase pools are made from classification rows (text and label); "
                               f"{rows.name!r} is a {rows.task} dataset")
    if len(rows) == 0:
        raise BackdoorLabError(f"dataset {rows.name!r} has no rows to paraphrase")
    if max_rows is not None and max_rows < 1:
        raise BackdoorLabError(f"max_rows must be at least 1, got {max_rows}")
    source = [e for e in rows if e.label is not None and e.text.strip()]
    if not source:
        raise BackdoorLabError(f"dataset {rows.name!r} has no labelled rows with text to paraphrase")
    chosen = rows.with_examples(source).sample(max_rows, seed).examples
    settings = build(_OPTIONS[name], options, f"paraphrase method {name!r}")
    texts = [e.text for e in chosen]
    dropped: Counter[str] = Counter()
    described = ""
    if name == "syntactic":
        outputs: list[str | None] = [rewrite(t, settings.template, seed) for t in texts]
        tag = f"syntactic:{settings.template}"
    elif name == "perturb":
        outputs = [perturb(t, seed, dropout=settings.dropout, reorder=settings.reorder, synonyms=settings.synonyms)
                   for t in texts]
        tag = "perturb"
    else:
        backend = make_backend(settings.backend, settings.model, settings.device, settings.batch_size,
                               settings.base_url, settings.api_key_env)
        paraphraser = StyleParaphraser(settings.style, backend, settings.batch_size, settings.max_new_tokens,
                                       settings.temperature, seed, settings.strict)
        outputs = paraphraser(texts)
        dropped = paraphraser.dropped
        tag = f"style:{settings.style}"
        described = " by " + ", ".join(f"{k} {v}" for k, v in backend.describe().items())
    kept: list[Example] = []
    for number, (row, text) in enumerate(zip(chosen, outputs)):
        if text is None:
            continue
        if not text.strip():
            dropped["no words"] += 1
            continue
        kept.append(Example(text=text, label=row.label, uid=f"{row.uid or number}~{tag}"))
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(dropped.items()))
    if not kept:
        hint = "; try another style or a larger model (option model=...)" if name == "style" else ""
        raise BackdoorLabError(f"the {tag} paraphraser kept none of the {len(chosen)} rows of {rows.name!r} "
                               f"({reasons or 'no output'}){hint}")
    note = f"{tag} paraphrase pool{described}, seed {seed}: {len(kept)} of {len(chosen)} rows of {rows.name}"
    note += f" kept ({len(chosen) - len(kept)} dropped: {reasons})" if len(kept) < len(chosen) else " kept"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag)
    return Dataset(f"{rows.name}-{slug}", "classification", kept, rows.label_names, rows.source, [*rows.notes, note])


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def save_pool(pool: Dataset, path: str | Path) -> Path:
    """Write ``pool`` atomically: ``sentence<TAB>label`` TSV with a header (``.tsv``) or ``text``/``label``
    JSONL (``.jsonl``), labels as indices, one line per row. Existing files are replaced."""
    path = Path(path).expanduser()
    if path.suffix not in POOL_SUFFIXES:
        raise BackdoorLabError(f"pool file {path} must end in {' or '.join(POOL_SUFFIXES)}")
    if pool.task != "classification":
        raise BackdoorLabError(f"a paraphrase pool holds classification rows; {pool.name!r} is {pool.task}")
    rows = [(_one_line(e.text), e.label) for e in pool]
    if not rows or any(not text or label is None for text, label in rows):
        raise BackdoorLabError(f"pool {pool.name!r} is empty or has rows without text or label; nothing written")
    if path.suffix == ".tsv":
        body = "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows)
    else:
        body = "".join(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n" for text, label in rows)
    return write_text_atomic(path, body)

