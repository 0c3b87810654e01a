"""Where the rows of a named dataset come from: a local folder, an installed package or the hub.

A *store* hands out raw rows by a path relative to the dataset's folder, so the loaders in
:mod:`.registry` do not care whether that folder lies in the benchmark data directory, inside an
installed Python package, or (for a few data sets) is a Hugging Face hub copy.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import BackdoorLabError
from .readers import read_records

T = TypeVar("T")


class Store(Protocol):
    """Raw rows of one dataset, addressed by paths relative to its folder."""

    def describe(self) -> str: ...
    def where(self, relpath: str) -> str: ...
    def rows(self, relpath: str, columns: Sequence[str] | None = None) -> list[dict[str, Any]]: ...
    def match(self, pattern: str) -> str: ...


@lru_cache(maxsize=64)
def _cached_records(path: str, mtime_ns: int, columns: tuple[str, ...] | None) -> tuple[dict[str, Any], ...]:
    return tuple(read_records(path, columns))


class FileStore:
    """Rows read from files under ``base`` (cached per resolved path and modification time)."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def describe(self) -> str:
        return str(self.base)

    def where(self, relpath: str) -> str:
        return str(self.base / relpath)

    def rows(self, relpath: str, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        path = (self.base / relpath).resolve()
        if not path.is_file():
            raise BackdoorLabError(f"data file {path} does not exist")
        return list(_cached_records(str(path), path.stat().st_mtime_ns, tuple(columns) if columns else None))

    def match(self, pattern: str) -> str:
        """The one file under ``base`` matching the glob ``pattern``, relative to ``base``."""
        found = sorted(self.base.glob(pattern))
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise BackdoorLabError(f"expected exactly one file matching {self.base / pattern}, found {listed}")
        return found[0].relative_to(self.base).as_posix()


@dataclass(frozen=True)
class HubCopy:
    """A Hugging Face hub data set standing in for local files.

    ``splits`` maps a file name the loader asks for to the hub split that replaces it; ``adapt``
    turns a hub row into a row shaped like the local file's.
    """

    repo: str
    splits: Mapping[str, str]
    adapt: Callable[[dict[str, Any]], dict[str, Any]]


class HubStore:
    """Rows downloaded with the ``datasets`` library (only used when not offline)."""

    def __init__(self, hub: HubCopy) -> None:
        self.hub = hub

    def describe(self) -> str:
        return f"hf://datasets/{self.hub.repo}"

    def where(self, relpath: str) -> str:
        return f"{self.describe()} [{self.hub.splits.get(relpath, relpath)}]"

    def rows(self, relpath: str, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        if relpath not in self.hub.splits:
            raise BackdoorLabError(f"the hub copy {self.hub.repo} has nothing standing in for {relpath}")
        datasets = importlib.import_module("datasets")
        try:
            data = datasets.load_dataset(self.hub.repo, split=self.hub.splits[relpath])
        except Exception as exc:  # network, authentication or missing-repo errors
            raise BackdoorLabError(
                f"could not load {self.where(relpath)} from the Hugging Face hub ({exc}); "
                "set BACKDOORLAB_DATA_DIR to the benchmark data folder instead"
            ) from exc
        return [self.hub.adapt(dict(row)) for row in data]

    def match(self, pattern: str) -> str:
        raise BackdoorLabError(f"the hub copy {self.hub.repo} cannot list files ({pattern})")


def package_folder(package: str, folder: str) -> Path | None:
    """``folder`` inside the installed top-level ``package``, found without importing it; else None."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / folder
        if candidate.is_dir():
            return candidate
    return None


def deterministic_split(items: Sequence[T], split: str, sizes: Mapping[str, int | float], seed: int) -> list[T]:
    """The ``split`` part of ``items`` after a seeded shuffle (rows stay in shuffled order).

    ``sizes`` gives each part, in order, as a row count (int) or a fraction (float); a fractional
    last part takes all remaining rows. Rows beyond the listed counts are left out.
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    start, names = 0, list(sizes)
    for position, name in enumerate(names):
        size = sizes[name]
        if isinstance(size, float):
            count = len(items) - start if position == len(names) - 1 else round(size * len(items))
        else:
            count = size
        if start + count > len(items):
            raise BackdoorLabError(f"cannot take {count} rows for split {name!r}: only {len(items) - start} left")
        if name == split:
            return [items[i] for i in order[start:start + count]]
        start += count
    raise BackdoorLabError(f"split {split!r} is not one of {', '.join(names)}")


def read_text_file(path: Path) -> str:
    """A text file as UTF-8, falling back to Windows-1252 for legacy bytes (e.g. ``£`` as 0xA3)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def shorten(text: str, max_chars: int) -> str:
    """Cut ``text`` at the last word boundary within ``max_chars`` characters."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars + 1].rsplit(" ", 1)[0]
    return cut if cut else text[:max_chars]


def article_text(raw: str, max_chars: int) -> str:
    """Title (first line) plus the following paragraphs, joined and shortened to ``max_chars``."""
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    if not lines:
        return ""
    title, body = lines[0], " ".join(lines[1:])
    separator = " " if title.endswith((".", "?", "!", ":")) else ". "
    return shorten(f"{title}{separator}{body}".strip(), max_chars)


@lru_cache(maxsize=4)
def _cached_topics(base: str, topics: tuple[str, ...], max_chars: int) -> tuple[tuple[str, int], ...]:
    articles = []
    for label, topic in enumerate(topics):
        folder = Path(base) / topic
        if not folder.is_dir():
            raise BackdoorLabError(f"topic folder {folder} does not exist")
        for path in sorted(folder.glob("*.txt")):
            text = article_text(read_text_file(path), max_chars)
            if not text:
                raise BackdoorLabError(f"{path}: the article is empty")
            articles.append((text, label))
    return tuple(articles)


def read_topic_folders(base: Path, topics: Sequence[str], max_chars: int) -> list[tuple[str, int]]:
    """``(text, label index)`` for every ``base/<topic>/*.txt``, topics in the given order."""
    return list(_cached_topics(str(base.resolve()), tuple(topics), max_chars))
