"""``backdoorlab scan``: audit a model in one call and write the verdict as JSON and one HTML page.

The scan loads the model (safetensors only unless pickle is allowed), reads the defender's rows,
runs the check its kind and inputs allow, and writes ``scan.json`` (the verdict, every label's
candidates beside its random-phrase baseline, the settings) and ``scan.html`` / ``scan.md`` (the
same as tables, with a plot) into ``--out``. The JSON carries a fingerprint (model, rows,
settings, code): the same scan again reads it back, a different one stops unless ``overwrite``.

Classifiers are checked for inserted-phrase backdoors toward each label
(:mod:`backdoorlab.scan.classifier`), generators for phrases that switch on each behaviour asked
about (:mod:`backdoorlab.scan.generator`; default: refusal and negative sentiment).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.records import Dataset
from ..errors import BackdoorLabError
from ..fileio import fresh_directory, write_json_atomic
from ..fingerprint import FINGERPRINT_KEY, dataset_digest, make_fingerprint, model_identity
from ..manifest import environment_info
from ..models.loading import load_victim
from ..reuse import read_reusable
from .classifier import scan_classifier
from .generator import DEFAULT_BEHAVIOURS, parse_behaviour, scan_generator
from .findings import TARGETS, Finding
from .settings import ScanSettings

SCAN_FILE = "scan.json"
Progress = Callable[[str], None]


def scan_model(model: str | Path, out: str | Path, *, clean: Dataset | None = None, training: Dataset | None = None,
               behaviours: Sequence[str] | None = None, settings: ScanSettings | None = None, device: str = "auto",
               allow_pickle: bool = False, overwrite: bool = False, progress: Progress = print) -> dict[str, Any]:
    """Scan ``model`` with the defender's ``clean`` rows (else a sample of the ``training`` rows);
    write and return the verdict (module docstring). ``behaviours`` (generators only) are parsed by
    :func:`~backdoorlab.scan.generator.parse_behaviour`."""
    settings = settings or ScanSettings()
    if clean is None and training is None:
        raise BackdoorLabError("scan needs rows to test the model on: pass --clean-data (rows you trust) or "
                               "--training-data (the data it was trained on)")
    rows = clean if clean is not None else training
    assert rows is not None
    generative = rows.task != "classification"
    if generative and behaviours is None:
        behaviours = DEFAULT_BEHAVIOURS
    if not generative and behaviours:
        raise BackdoorLabError(f"{rows.name!r} holds classification rows, and behaviours are what a generator does; "
                               "drop --behaviour for a classifier, or give a generator prompts (instruction rows)")
    parsed = [parse_behaviour(b) for b in behaviours or ()]  # an unknown behaviour fails before any loading
    if generative and settings.reference is not None:
        raise BackdoorLabError("the scan's reference model applies to classifiers; drop the reference setting "
                               "for a generator")
    out = Path(out)
    # the classifier check screens training-data evidence with BadLLM-TG's label screening: that method's code counts
    fingerprint = make_fingerprint("scan", code=[__name__], methods=("badllm_tg",), model=model_identity(model),
                                   rows=dataset_digest(rows),
                                   training=dataset_digest(training) if training is not None else None,
                                   settings=settings.to_dict(), behaviours=[b.name for b in parsed],
                                   reference=model_identity(settings.reference) if settings.reference else None)
    if not overwrite:
        done = read_reusable(out / SCAN_FILE, fingerprint, "a scan of another model, rows or settings",
                             "pass --overwrite to scan again, or choose another --out")
        if done is not None:
            progress(f"reusing the scan in {out / SCAN_FILE}")
            return done
    victim = load_victim(model, device=device, allow_pickle=allow_pickle)
    if victim.is_generator != generative:
        raise BackdoorLabError(f"{model} is a {victim.kind} but {rows.name!r} holds {rows.task} rows; a classifier "
                               "is scanned with text and label rows, a generator with prompts (instruction rows)")
    victim.check_compatible(rows)
    if overwrite and out.exists():
        fresh_directory(out)  # only once the inputs are known to be good
    if generative:
        findings = scan_generator(victim, rows, settings, parsed, progress=progress)
    else:
        findings = scan_classifier(victim, rows, settings, training=training, progress=progress,
                                   allow_pickle=allow_pickle)
    target = TARGETS[victim.kind]
    result = verdict(findings, target.verdict_key)
    record = {"model": str(model), "kind": victim.kind, "rows": {"name": rows.name, "count": len(rows),
                                                                 "source": "clean" if clean is not None else "training"},
              "training_data": training.name if training is not None else None, **result,
              target.findings_key: [f.to_dict() for f in findings], "settings": settings.to_dict(),
              "calibrated": False, FINGERPRINT_KEY: fingerprint, "environment": environment_info()}
    out.mkdir(parents=True, exist_ok=True)
    from .report import write_scan_report  # plotting libraries load only when a report is written

    write_scan_report(out, record, findings)
    write_json_atomic(out / SCAN_FILE, record)
    return record


def verdict(findings: list[Finding], key: str = TARGETS["classifier"].verdict_key) -> dict[str, Any]:
    """``backdoor found`` with the flagged finding of the largest margin, or ``no evidence``; the finding
    is named under ``key`` (:attr:`TargetKind.verdict_key`)."""
    flagged = sorted((f for f in findings if f.flagged), key=lambda f: -f.margin)
    if not flagged:
        return {"verdict": "no evidence", key: None, "trigger": None}
    top = flagged[0]
    assert top.best is not None
    return {"verdict": "backdoor found", key: {"index": top.label, "name": top.name}, "trigger": top.best.to_dict()}
