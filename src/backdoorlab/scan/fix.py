"""``backdoorlab scan --fix``: scan, purify, scan the purified model again, and set the two side by side.

The defender's clean rows are split in two halves (seeded): the scans measure on one, the
purification learns from the other, so "after" is never measured on rows the fix trained on.
``--fix auto`` unlearns the trigger the scan found (``unlearn-trigger``; for a generator with the
flagged behaviour); ``--fix METHOD`` runs any defense that changes the model
(``backdoorlab defenses``) with the learning half as its clean rows. Utility is measured on the
scan's half: a classifier's accuracy and macro-F1, a generator's rate of each behaviour on the
clean prompts. Everything goes under ``--out``: the first scan (``scan.json``), ``fix/rows``,
``fix/defense`` (the purified ``model/``), ``fix/scan`` (the second scan), ``fix.json`` and
``fix.md`` / ``fix.html`` (before and after side by side).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.records import Dataset
from ..errors import BackdoorLabError
from ..fileio import write_json_atomic
from ..metrics.classification import macro_f1
from ..models.loading import load_victim
from ..training import MODEL_DIR
from .findings import TARGETS
from .run import scan_model
from .settings import ScanSettings

AUTO = "auto"
FIX_DIR, FIX_FILE = "fix", "fix.json"
Progress = Callable[[str], None]


def split_for_fix(rows: Dataset, seed: int) -> tuple[Dataset, Dataset]:
    """``(rows the scans measure on, rows the fix learns from)``: two seeded halves."""
    shuffled = list(rows)
    random.Random(f"scan-fix-{seed}").shuffle(shuffled)
    half = len(shuffled) // 2
    return (rows.with_examples(shuffled[:half], note="the scans' half of the clean rows"),
            rows.with_examples(shuffled[half:], note="the fix's half of the clean rows"))


def scan_and_fix(model: str | Path, out: str | Path, fix: str, *, clean: Dataset | None,
                 fix_options: dict[str, Any] | None = None, training: Dataset | None = None,
                 behaviours: Sequence[str] | None = None,
                 settings: ScanSettings | None = None, device: str = "auto", allow_pickle: bool = False,
                 overwrite: bool = False, progress: Progress = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scan ``model``, purify it with ``fix`` (``auto`` or a defense name, with ``fix_options``), scan the
    result; write ``fix.json`` (module docstring) and return ``(the first scan's record, fix.json's content)``."""
    from ..defenses import get_defense, run_defense

    if clean is None:
        raise BackdoorLabError("--fix learns from rows you trust: pass --clean-data (training data may be poisoned)")
    settings = settings or ScanSettings()
    if fix != AUTO:
        get_defense(fix)  # an unknown method fails before any scan
    scanned, learn = split_for_fix(clean, settings.seed)
    out = Path(out)
    common = {"training": training, "behaviours": behaviours, "settings": settings, "device": device,
              "allow_pickle": allow_pickle, "progress": progress}
    before = scan_model(model, out, clean=scanned, overwrite=overwrite, **common)
    method, options, behaviour = choose_fix(fix, before)
    options = {**options, **(fix_options or {})}
    progress(f"fixing with {method}" + (f" ({options})" if options else "") + f" on {len(learn)} clean rows")
    findings = before[TARGETS[before["kind"]].findings_key]
    if before["kind"] == "classifier":  # the rows keep the suspect's label names (a file's labels may be bare numbers)
        learn = Dataset(learn.name, learn.task, learn.examples, [f["name"] for f in findings], learn.source,
                        learn.notes)
    learn.save(out / FIX_DIR / "rows", overwrite=True)
    run_defense(method, model, None, out / FIX_DIR / "defense", clean_data=out / FIX_DIR / "rows",
                behaviour=behaviour, options=options, evaluate=False, device=device, allow_pickle=allow_pickle,
                overwrite=overwrite)
    fixed = out / FIX_DIR / "defense" / MODEL_DIR
    if not fixed.is_dir():
        raise BackdoorLabError(f"{method} wrote no model (an inference-time defense writes a guard); --fix takes a "
                               "defense that changes the model, such as fine-tune or unlearn-trigger")
    progress("scanning the fixed model")
    after = scan_model(fixed, out / FIX_DIR / "scan", clean=scanned, overwrite=overwrite, **common)
    summary = {"method": method, "options": options, "behaviour": behaviour, "model": str(fixed),
               "rows": {"scanned": len(scanned), "learned_from": len(learn)},
               "before": _summary(before, utility(model, scanned, before, device, allow_pickle)),
               "after": _summary(after, utility(fixed, scanned, after, device, allow_pickle))}
    write_json_atomic(out / FIX_FILE, summary)
    _report(out, summary)
    return before, summary


def _report(out: Path, summary: dict[str, Any]) -> None:
    """``fix.md`` / ``fix.html``: the two scans and the utility side by side."""
    from ..bench.report import TableSpec, write_report

    keys = [k for k in summary["before"] if k in summary["after"]]
    table = TableSpec(f"Before and after {summary['method']} (on the {summary['rows']['scanned']} rows the scans used)",
                      ["", "before", "after"], [[k, summary["before"][k], summary["after"][k]] for k in keys])
    notes = [f"Fixed with {summary['method']} {summary['options'] or ''} on {summary['rows']['learned_from']} clean rows "
             "the scans never measure on; the fixed model is " + summary["model"] + ".",
             "The second scan searches the fixed model afresh: a trigger it names may differ from the first."]
    write_report(out, "Scan and fix", [table], [], notes, name="fix")


def choose_fix(fix: str, record: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    """``(defense, options, behaviour)`` for ``--fix``: ``auto`` unlearns the trigger the scan found."""
    behaviour = None
    if record["kind"] == "generator":  # the flagged behaviour, else the first one scanned for
        behaviour = (record["behaviour"] or record["behaviours"][0])["name"]
    if fix != AUTO:
        return fix, {}, behaviour
    if record["trigger"] is None:
        raise BackdoorLabError("the scan found no backdoor, so --fix auto has nothing to unlearn; pass --fix METHOD to "
                               "purify anyway (backdoorlab defenses lists them)")
    return "unlearn-trigger", {"trigger": record["trigger"]["phrase"]}, behaviour


def utility(model: str | Path, rows: Dataset, record: dict[str, Any], device: str, allow_pickle: bool) -> dict[str, Any]:
    """A classifier's accuracy and macro-F1 on ``rows``; a generator's rate of each behaviour on the clean
    prompts (from its scan)."""
    if record["kind"] == "generator":
        return {f"clean {b['name']} rate": b["base_rate"] for b in record["behaviours"]}
    victim = load_victim(model, device=device, allow_pickle=allow_pickle)
    labelled = [e for e in rows if e.label is not None]
    predicted = victim.predict([e.text for e in labelled])
    truth = [int(e.label) for e in labelled]  # type: ignore[arg-type]
    return {"accuracy": sum(p == t for p, t in zip(predicted, truth)) / max(len(truth), 1),
            "macro_f1": macro_f1(predicted, truth)}


def _summary(record: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    trigger = record["trigger"] or {}
    target = record[TARGETS[record["kind"]].verdict_key] or {}
    return {"verdict": record["verdict"], "target": target.get("name"), "trigger": trigger.get("phrase"),
            "trigger_rate": trigger.get("flip_rate"), **measured}
