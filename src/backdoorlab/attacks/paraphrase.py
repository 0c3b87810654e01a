"""Trigger-less paraphrase attacks: StyleBkd, SynBkd and attacks driven by any paraphraser.

StyleBkd (Qi et al. 2021, "Mind the Style of Text!") and SynBkd / HiddenKiller (Qi et al. 2021,
"Hidden Killer") use a text style or a syntactic template as the trigger. Running the style or
SCPN paraphrasers is slow, so these attacks read precomputed paraphrases from the benchmark data
folder (``data_dir`` option, else the project's data directory):

- StyleBkd: ``<data_dir>/classification/style/<style>/<dataset>/<split>.tsv``
  (``sentence<TAB>label``, label = label of the source sentence).
- SynBkd: ``<data_dir>/classification/synbkd/<dataset>/target<t>/<split>-poison.csv``
  (header ``,0,1,2``: index, text, label (= target), poison flag).

The paraphrase files are not row-aligned with the clean data sets, so they are used as *pools*:
each chosen row is replaced by an unused pool row with the same true label (drawn with the seed).
SynBkd files carry the target label only; the true labels are recovered from the matching
``<split>-clean.csv`` (train: same rows in the same order; dev/test: the poison file holds the
clean file's non-target rows in order; both checked by row counts).

New paraphrases can be produced with any :class:`Paraphraser` (a callable mapping a list of
texts to a list of texts): use it directly with the ``paraphrase`` attack, or write a pool in the
StyleBkd file format with :func:`save_paraphrase_pool` and point ``stylebkd`` at it.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..data.readers import read_delimited, require_fields
from ..data.records import Dataset, Example
from ..errors import BackdoorLabError
from ..fileio import write_text_atomic
from .base import PoisonContext, Purpose, check_optional_dir, check_positive_int, check_text, register_attack
from .classification import ClassificationAttack

#: Data sets with precomputed StyleBkd/SynBkd paraphrases in the benchmark data.
POOL_DATASETS = ("sst2", "hsol", "agnews")
#: Styles shipped with the benchmark data (any folder under ``classification/style`` works).
STYLES = ("bible", "shakespeare", "lyrics", "poetry", "tweets")
#: The SCPN template of the shipped SynBkd paraphrases.
SYNBKD_TEMPLATE = "S(SBAR)(,)(NP)(VP)(.)"


@runtime_checkable
class Paraphraser(Protocol):
    """Anything that paraphrases a batch: ``paraphraser(["a text", ...]) -> ["its paraphrase", ...]``.

    It must return exactly one string per input, in order (e.g. a wrapper around a style-transfer
    or SCPN model, or an LLM prompted to rewrite text).
    """

    def __call__(self, texts: list[str]) -> list[str]: ...


def callable_name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", None) or type(function).__qualname__


def run_paraphraser(paraphraser: Paraphraser, texts: Sequence[str], batch_size: int = 32) -> list[str]:
    """Paraphrase ``texts`` in batches, checking that each batch comes back complete."""
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        result = list(paraphraser(batch))
        if len(result) != len(batch) or not all(isinstance(t, str) for t in result):
            raise BackdoorLabError(
                f"paraphraser {callable_name(paraphraser)} returned {len(result)} item(s) for {len(batch)} "
                "text(s); it must return one string per input text"
            )
        out.extend(result)
    return out


def save_paraphrase_pool(dataset: Dataset, paraphraser: Paraphraser, path: str | Path,
                         batch_size: int = 32) -> Path:
    """Paraphrase every row of a classification dataset into a StyleBkd-format TSV (atomically).

    Save it as ``<data_dir>/classification/style/<style>/<dataset>/<split>.tsv`` to use it with
    ``get_attack("stylebkd", style=<style>, data_dir=<data_dir>)``.
    """
    if dataset.task != "classification":
        raise BackdoorLabError(f"save_paraphrase_pool needs a classification dataset; {dataset.name!r} is {dataset.task}")
    rows = [e for e in dataset if e.label is not None]
    texts = run_paraphraser(paraphraser, [e.text for e in rows], batch_size)
    clean = (re.sub(r"\s+", " ", t).strip() for t in texts)
    body = "sentence\tlabel\n" + "".join(f"{t}\t{e.label}\n" for t, e in zip(clean, rows))
    return write_text_atomic(path, body)


@dataclass(frozen=True)
class PoolRow:
    """One precomputed paraphrase; ``label`` is ``None`` when only known to be non-target."""

    text: str
    label: int | None
    where: str  # "<file relative to data_dir>#<data row number>"


@dataclass(frozen=True)
class Pool:
    rows: list[PoolRow]
    origin: str  # the file(s) the rows come from, for messages


class _PoolDrawer:
    """Draws pool rows without replacement, matching each request's label.

    Rows of unknown label (non-target only) serve any non-target request once that label's own
    rows run out.
    """

    def __init__(self, pool: Pool, target: int | None, rng: random.Random) -> None:
        self.buckets: dict[int | None, list[PoolRow]] = defaultdict(list)
        for row in pool.rows:
            self.buckets[row.label].append(row)
        for key in sorted(self.buckets, key=lambda k: -1 if k is None else k):
            rng.shuffle(self.buckets[key])
        self.target = target

    def _keys(self, label: int | None) -> list[int | None]:
        fallback = label is not None and self.target is not None and label != self.target
        return [label, None] if fallback else [label]

    def available(self, label: int | None) -> int:
        return sum(len(self.buckets.get(k, [])) for k in self._keys(label))

    def take(self, label: int | None) -> PoolRow | None:
        for key in self._keys(label):
            if self.buckets.get(key):
                return self.buckets[key].pop()
        return None


@dataclass
class PoolAttack(ClassificationAttack):
    """Base for attacks that replace rows by precomputed paraphrases (see the module docstring).

    Options: ``data_dir`` (folder holding ``classification/``; default: the project's data
    directory) and ``source_dataset`` (``sst2``/``hsol``/``agnews``; default: inferred from the
    dataset name, which must start with one of them).
    """

    data_dir: str | None = None
    source_dataset: str | None = None

    def __post_init__(self) -> None:
        self.data_dir = check_optional_dir(self, "data_dir", self.data_dir)
        if self.source_dataset is not None:
            self.source_dataset = check_text(self, "source_dataset", self.source_dataset).lower()

    def load_pool(self, source: str, purpose: Purpose, target: int | None, notes: list[str]) -> Pool:
        """The paraphrase pool for a purpose (``target`` None: every target folder, for :meth:`apply`)."""
        raise NotImplementedError

    def root(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir)
        from ..data.registry import resolve_data_dir  # imported lazily: optional at import time

        return Path(resolve_data_dir(None))

    def source_name(self, dataset: Dataset | None) -> str:
        if self.source_dataset:
            return self.source_dataset
        name = dataset.name.lower() if dataset is not None else ""
        match = re.match(r"(%s)(?![a-z0-9])" % "|".join(POOL_DATASETS), name)
        if not match:
            what = f"dataset {dataset.name!r}" if dataset is not None else "a single example"
            raise self.option_error(
                "source_dataset", f"cannot tell which precomputed paraphrases to use for {what}; "
                f"pass source_dataset= one of {', '.join(POOL_DATASETS)}")
        return match.group(1)

    def apply(self, example: Example, rng: random.Random) -> Example:
        """Replace the text by a random training-pool paraphrase with the same label."""
        pool = self.load_pool(self.source_name(None), "train", None, [])
        matching = [row for row in pool.rows if row.label == example.label]
        if not matching:
            raise BackdoorLabError(f"{self.name}: no paraphrase with label {example.label!r} in {pool.origin}")
        return self._replace(example, rng.choice(matching))

    def transform_rows(self, rows: Sequence[Example], rng: random.Random,
                       context: PoisonContext) -> list[Example | None]:
        pool = self.load_pool(self.source_name(context.dataset), context.purpose, context.target, context.notes)
        self._check_labels(pool, context.dataset)
        drawer = _PoolDrawer(pool, context.target, rng)
        if context.purpose == "train":
            self._check_enough(drawer, pool, rows, context.dataset)
        out = [None if (row := drawer.take(e.label)) is None else self._replace(e, row) for e in rows]
        if None in out:
            context.notes.append(f"{self.name}: {pool.origin} ran out of paraphrases; "
                                 f"{out.count(None)} of {len(rows)} rows left out")
        return out

    def _replace(self, example: Example, row: PoolRow) -> Example:
        poison = {"attack": self.name, "trigger": self.trigger_summary(),
                  "original_label": "non-target" if row.label is None else row.label,
                  "paraphrase_source": row.where}
        return example.with_(text=row.text, label=row.label, poisoned=True, poison=poison)

    def _check_labels(self, pool: Pool, dataset: Dataset) -> None:
        for row in pool.rows:
            if row.label is not None and not 0 <= row.label < dataset.num_labels:
                raise BackdoorLabError(f"{row.where}: label {row.label} is outside the {dataset.num_labels} "
                                       f"labels of {dataset.name!r}; is this the right source_dataset?")

    def _check_enough(self, drawer: _PoolDrawer, pool: Pool, rows: Sequence[Example], dataset: Dataset) -> None:
        for label, needed in sorted(Counter(e.label for e in rows).items(), key=lambda kv: str(kv[0])):
            have = drawer.available(label)
            if have < needed:
                name = (dataset.label_names or [])[label] if label is not None else "unknown"
                raise BackdoorLabError(
                    f"{self.name}: {pool.origin} has {have} paraphrases with label {label} ({name}) but "
                    f"{needed} rows with that label were chosen for poisoning; lower the rate")

    def relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root()))
        except ValueError:
            return str(path)


def _int_label(path: Path, number: int, value: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise BackdoorLabError(f"{path}: data row {number}: label {value!r} is not an integer") from None


@register_attack
@dataclass
class StyleBkd(PoolAttack):
    """StyleBkd (Qi et al. 2021): text style (default ``bible``) as the trigger, from precomputed pools.

    Poisoning replaces the chosen rows by ``<train_split>.tsv`` paraphrases of the same true label;
    the triggered test set uses ``<test_split>.tsv`` paraphrases of the non-target test rows.
    """

    name: ClassVar[str] = "stylebkd"
    description: ClassVar[str] = "style-transfer paraphrases (default: bible) as a hidden trigger"

    style: str = "bible"
    train_split: str = "train"
    test_split: str = "test"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.style = check_text(self, "style", self.style).lower()
        self.train_split = check_text(self, "train_split", self.train_split)
        self.test_split = check_text(self, "test_split", self.test_split)

    def trigger_summary(self) -> str:
        return f"{self.style} style"

    def load_pool(self, source: str, purpose: Purpose, target: int | None, notes: list[str]) -> Pool:
        split = self.train_split if purpose == "train" else self.test_split
        style_root = self.root() / "classification" / "style"
        path = style_root / self.style / source / f"{split}.tsv"
        if not path.is_file():
            styles = sorted(p.name for p in style_root.glob("*") if p.is_dir()) if style_root.is_dir() else []
            raise BackdoorLabError(f"stylebkd: no paraphrase file {path}; styles under {style_root}: "
                                   f"{', '.join(styles) or '(none)'}")
        records = read_delimited(path, "\t")
        require_fields(path, records, ["sentence", "label"])
        where = self.relative(path)
        rows = [PoolRow(r["sentence"].strip(), _int_label(path, n, r["label"]), f"{where}#{n}")
                for n, r in enumerate(records, start=1)]
        return Pool(rows, where)


@dataclass(frozen=True)
class _ScpnRow:
    text: str
    label: int


def _read_scpn(path: Path) -> list[_ScpnRow]:
    records = read_delimited(path, ",")
    require_fields(path, records, ["0", "1"])
    return [_ScpnRow(r["0"].strip(), _int_label(path, n, r["1"])) for n, r in enumerate(records, start=1)]


def _recover_labels(poison: list[_ScpnRow], clean: list[_ScpnRow] | None, target: int) -> list[int | None] | None:
    """True labels of SCPN paraphrases from their clean file (see the module docstring), else None."""
    if clean is None:
        return None
    if len(clean) == len(poison):
        return [row.label for row in clean]
    non_target = [row.label for row in clean if row.label != target]
    return non_target if len(non_target) == len(poison) else None


@register_attack
@dataclass
class SynBkd(PoolAttack):
    """SynBkd / HiddenKiller (Qi et al. 2021): an SCPN syntactic template as the trigger.

    Uses the precomputed paraphrases of ``target<t>/`` (only the target labels shipped there are
    possible). Poisoning draws from ``<train_split>-poison.csv`` (``dev-poison.csv`` when there is
    no training file, as for AG News; recorded in the notes); the triggered test set from
    ``<test_split>-poison.csv``.
    """

    name: ClassVar[str] = "synbkd"
    description: ClassVar[str] = f"SCPN syntactic paraphrases (template {SYNBKD_TEMPLATE}) as a hidden trigger"

    train_split: str = "train"
    test_split: str = "test"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.train_split = check_text(self, "train_split", self.train_split)
        self.test_split = check_text(self, "test_split", self.test_split)

    def trigger_summary(self) -> str:
        return f"syntactic template {SYNBKD_TEMPLATE}"

    def load_pool(self, source: str, purpose: Purpose, target: int | None, notes: list[str]) -> Pool:
        base = self.root() / "classification" / "synbkd" / source
        targets = sorted(int(p.name[6:]) for p in base.glob("target*") if p.name[6:].isdigit())
        if target is not None and target not in targets:
            raise BackdoorLabError(
                f"synbkd: precomputed paraphrases for {source} exist only for target label(s) "
                f"{', '.join(map(str, targets)) or '(none)'} (folders target<t> under {base}); "
                f"target {target} has none")
        pools = [self._folder_pool(base / f"target{t}", t, purpose, notes) for t in
                 ([target] if target is not None else targets)]
        return Pool([row for pool in pools for row in pool.rows], ", ".join(pool.origin for pool in pools))

    def _folder_pool(self, folder: Path, target: int, purpose: Purpose, notes: list[str]) -> Pool:
        split = self.train_split if purpose == "train" else self.test_split
        path = folder / f"{split}-poison.csv"
        if not path.is_file() and purpose == "train" and (folder / "dev-poison.csv").is_file():
            notes.append(f"synbkd: {self.relative(folder)} has no {split}-poison.csv; its dev-poison.csv "
                         "(paraphrased dev rows) is the poisoning pool")
            split, path = "dev", folder / "dev-poison.csv"
        if not path.is_file():
            raise BackdoorLabError(f"synbkd: no paraphrase file {path}")
        poison = _read_scpn(path)
        clean_path = folder / f"{split}-clean.csv"
        labels = _recover_labels(poison, _read_scpn(clean_path) if clean_path.is_file() else None, target)
        if labels is None:
            notes.append(f"synbkd: true labels of {self.relative(path)} unknown (only non-target)")
            labels = [None] * len(poison)
        where = self.relative(path)
        rows = [PoolRow(row.text, label, f"{where}#{n}") for n, (row, label) in enumerate(zip(poison, labels), 1)]
        return Pool(rows, where)


@register_attack
@dataclass
class ParaphraseAttack(ClassificationAttack):
    """Paraphrase the chosen rows with any :class:`Paraphraser` (e.g. a new style or template).

    ``paraphraser`` is required; ``batch_size`` texts are sent per call; ``label`` names the
    trigger in manifests (default: the paraphraser's qualified name).
    """

    name: ClassVar[str] = "paraphrase"
    description: ClassVar[str] = "rows rewritten by a user-supplied paraphraser (callable list[str] -> list[str])"

    paraphraser: Paraphraser | None = None
    batch_size: int = 32
    label: str = ""

    def __post_init__(self) -> None:
        if not callable(self.paraphraser):
            raise self.option_error("paraphraser", "pass a callable that maps a list of texts to a list of "
                                    f"paraphrases, got {self.paraphraser!r}")
        self.batch_size = check_positive_int(self, "batch_size", self.batch_size)

    def trigger_summary(self) -> str:
        return self.label or f"paraphrase by {callable_name(self.paraphraser)}"

    def edit_text(self, text: str, rng: random.Random) -> tuple[str, str]:
        return run_paraphraser(self.paraphraser, [text], 1)[0], self.trigger_summary()

    def transform_rows(self, rows: Sequence[Example], rng: random.Random,
                       context: PoisonContext) -> list[Example | None]:
        texts = run_paraphraser(self.paraphraser, [e.text for e in rows], self.batch_size)
        return [e.with_(text=t, poisoned=True,
                        poison={"attack": self.name, "trigger": self.trigger_summary(), "original_label": e.label})
                for e, t in zip(rows, texts)]
