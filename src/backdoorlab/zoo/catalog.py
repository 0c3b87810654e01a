"""Finished zoo victims on disk: where their model, adapter and attack run are, and what they measure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackdoorLabError
from ..fileio import read_json  # noqa: F401  (re-exported: the zoo's readers use it)
from .quality import FIGURES

RECORD = "victim.json"
#: The spec of the zoo's last build, in the zoo folder.
ZOO_FILE = "zoo.json"
#: Where zoos are built unless a folder is given (``runs/`` is not under version control).
DEFAULT_ZOO_DIR = Path("runs/zoo")
#: Table columns: victim figure and the untouched model's figure beside it.
COLUMNS = ("victim", "ASR (untouched)", "clean behaviour (untouched)", "clean PPL (untouched)",
           "task acc (untouched)", "minutes", "quality bar")


@dataclass(frozen=True)
class ZooVictim:
    """A finished zoo victim: ``folder`` and its record (``victim.json``)."""

    name: str
    folder: Path
    record: dict[str, Any]

    def _path(self, key: str) -> Path | None:
        relative = self.record["paths"].get(key)
        return None if relative is None else self.folder / relative

    @property
    def model(self) -> Path:
        """The backdoored model folder (LoRA merged into the weights)."""
        return self._path("model")  # type: ignore[return-value]

    @property
    def adapter(self) -> Path | None:
        """The LoRA adapter on its own (peft, safetensors); ``None`` for full fine-tuning."""
        return self._path("adapter")

    @property
    def attack_run(self) -> Path:
        """The attack run: poisoned training rows, clean and triggered test rows, manifest."""
        return self._path("attack_run")  # type: ignore[return-value]

    @property
    def untouched_model(self) -> Path:
        """The base model the victim was fine-tuned from, as it was measured beside the victim."""
        return Path(self.record["paths"]["untouched_model"])

    @property
    def passed(self) -> bool:
        return bool(self.record.get("passed"))

    @property
    def failing(self) -> list[str]:
        return list(self.record.get("failing") or [])

    def figure(self, key: str, which: str = "victim") -> float | None:
        return self.record["figures"][which].get(key)

    def summary_line(self) -> str:
        """One line: each figure beside the untouched model's, build minutes and the verdict."""
        row = table_row(self)
        parts = [f"{label.split(' (')[0]} {row[label]}" for label in COLUMNS[1:5]]
        return ", ".join(parts) + f"; {row['minutes']} min; {row['quality bar']}"


def format_figure(key: str, value: float | None) -> str:
    """A figure as the tables show it: rates in percent, perplexity with two decimals."""
    if value is None:
        return "-"
    return f"{value:.2f}" if key == "clean_perplexity" else f"{100 * value:.1f}%"


def table_row(victim: ZooVictim) -> dict[str, str]:
    """The victim's row of the zoo table (``COLUMNS``)."""
    row = {"victim": victim.name}
    for label, key in zip(COLUMNS[1:5], FIGURES):
        row[label] = f"{format_figure(key, victim.figure(key))} ({format_figure(key, victim.figure(key, 'untouched'))})"
    row["minutes"] = f"{victim.record['minutes']['total']:.1f}"
    row["quality bar"] = "pass" if victim.passed else "fail: " + "; ".join(victim.failing)
    return row


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Zoo table rows (:func:`table_row`, :func:`missing_row`) as a Markdown table."""
    from ..report import format_table

    return format_table(rows, COLUMNS, markdown=True)


def missing_row(name: str) -> dict[str, str]:
    """The row of a victim that has not been built yet."""
    return {"victim": name, **{label: "-" for label in COLUMNS[1:-1]}, "quality bar": "not built"}


def zoo_rows(zoo_dir: str | Path = DEFAULT_ZOO_DIR, expected: list[str] | tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The zoo table: a row per finished victim in ``zoo_dir`` and per victim of its last build's
    spec (``zoo.json``; else ``expected``) not finished yet, in the spec's order."""
    spec = read_json(Path(zoo_dir) / ZOO_FILE)
    names = [v["name"] for v in spec["victims"]] if spec and isinstance(spec.get("victims"), list) else list(expected)
    built = {v.name: v for v in list_zoo(zoo_dir)}
    order = list(dict.fromkeys([*names, *built]))
    return [table_row(built[n]) if n in built else missing_row(n) for n in order]


def read_victim(folder: Path) -> ZooVictim | None:
    """The finished victim in ``folder``, or ``None`` if it holds none."""
    record = read_json(folder / RECORD)
    if record is None or "paths" not in record or "figures" not in record:
        return None
    return ZooVictim(record.get("name", folder.name), folder, record)


def list_zoo(zoo_dir: str | Path = DEFAULT_ZOO_DIR) -> list[ZooVictim]:
    """Every finished victim in ``zoo_dir``, by name."""
    root = Path(zoo_dir)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [v for v in (read_victim(p) for p in folders) if v is not None]


def load_zoo_victim(name: str, zoo_dir: str | Path = DEFAULT_ZOO_DIR) -> ZooVictim:
    """The finished victim ``name`` of the zoo in ``zoo_dir``; a clear error when it is not built."""
    victim = read_victim(Path(zoo_dir) / name)
    if victim is None:
        built = ", ".join(v.name for v in list_zoo(zoo_dir)) or "none"
        raise BackdoorLabError(f"no finished zoo victim {name!r} in {zoo_dir} (built: {built}); build it with "
                               f"`backdoorlab zoo build --only {name}`")
    return victim
