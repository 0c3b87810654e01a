"""``backdoorlab defend``: apply a defense to a suspect model, and measure it before and after.

A defense gets only what a defender holds (:mod:`backdoorlab.defenses.inputs`): the suspect model
and the inputs its method declares, from the user's files or, for benchmarks, derived from an
attack run. The attack run's test splits are only what the result is measured on.

The run folder gets ``model/`` (the mitigated model, written atomically; absent when the defense
leaves the model unchanged), ``guard.json`` (inference-time defenses), the defense's work files
(e.g. ``analysis/``, ``trigger.json``), ``defense.json`` (method, options, the inputs it used,
findings, which model to load) and, when an attack run is given, ``metrics.json`` (ASR and clean
metrics before and after, on the same rows).

The folder is claimed by a fingerprint (method, options, model identity, inputs, package
version): running the same command again resumes it; a different command on the same folder
stops with a clear error instead of mixing results; ``overwrite`` starts a fresh folder.
Evaluations are cached with their own fingerprints and recomputed when anything they depend on
changed.

"Before" is the input model evaluated on the attack run, except for training-stage defenses,
whose input is a clean pretrained model: their "before" is ``baseline`` (an evaluation of the
undefended victim) when given, and left out otherwise.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import BackdoorLabError
from ..fileio import fresh_directory, write_json_atomic
from ..fingerprint import FINGERPRINT_KEY, dataset_digest, make_fingerprint, model_identity
from ..manifest import environment_info
from ..pipeline import ensure_evaluation, evaluation_rows, row_ids
from ..reuse import FOLDER_FINGERPRINT, claim_folder, claimed_fingerprint
from .base import Defense, get_defense
from .guard import GUARD_FILE, save_guard
from .inputs import DefenderInputs, gather_inputs

MODEL_DIR = "model"
DEFENSE_FILE = "defense.json"
METRICS_FILE = "metrics.json"
BEFORE_FILE, AFTER_FILE = "metrics-before.json", "metrics-after.json"


def run_defense(method: str, model: str | Path, attack_run: str | Path | None, out: str | Path, *,
                options: dict[str, Any] | None = None, train_data: str | Path | None = None,
                clean_data: str | Path | None = None, behaviour: str | None = None,
                target_label: int | str | None = None, reference_model: str | Path | None = None,
                pretrained_model: str | Path | None = None, suspect_adapter: str | Path | None = None,
                evaluate: bool = True, max_eval_rows: int | None = 100, baseline: str | Path | None = None,
                max_new_tokens: int = 48, device: str = "auto", allow_pickle: bool = False,
                data_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run defense ``method`` on ``model``; return ``metrics.json``'s content (or, without an attack run
    or with ``evaluate=False``, the method and the defended model).

    ``train_data``, ``clean_data``, ``behaviour``, ``target_label``, ``reference_model``,
    ``pretrained_model`` and ``suspect_adapter`` are the defender's inputs; those the method needs and the
    user did not give are derived from ``attack_run`` where a defender's view of it allows (see
    :func:`~backdoorlab.defenses.inputs.gather_inputs`).
    ``baseline``: an existing evaluation (``backdoorlab evaluate --out FILE``) of the undefended
    model on ``attack_run``, on the same rows, used as "before".
    """
    defense = get_defense(method, **dict(options or {}))
    out = Path(out)
    inputs = gather_inputs((*defense.needs, *defense.uses), attack_run=attack_run, train_data=train_data,
                           clean_data=clean_data, behaviour=behaviour, target_label=target_label,
                           reference_model=reference_model, pretrained_model=pretrained_model,
                           suspect_adapter=suspect_adapter, data_dir=data_dir)
    defense.check_inputs(inputs)
    measure = evaluate and attack_run is not None
    if baseline and not Path(baseline).is_file():
        raise BackdoorLabError(f"baseline {baseline} does not exist; it must be an evaluation of the undefended "
                               "victim on the same attack run (`backdoorlab evaluate --out FILE`)")
    fingerprint = make_fingerprint("defense", code=[type(defense).__module__, __name__], method=method, options=defense.options(), model=model_identity(model),
                                   inputs=inputs.identity())
    if overwrite:
        fresh_directory(out)
    fresh = not out.is_dir() or not any(out.iterdir())
    earlier = (claimed_fingerprint(out) or {}).get("method", method)  # the run the folder holds
    claim_folder(out, fingerprint, f"an earlier {earlier} defense run")
    eval_options = {"max_rows": max_eval_rows, "max_new_tokens": max_new_tokens, "device": device,
                    "allow_pickle": allow_pickle}
    before = None
    with _released_unless_used(out, fresh):
        if measure and baseline:
            before = _baseline(Path(baseline), attack_run, max_eval_rows)  # type: ignore[arg-type]
        elif measure and defense.stage != "training":
            before = ensure_evaluation(model, attack_run, out / BEFORE_FILE, **eval_options)  # type: ignore[arg-type]
        record = _defense_record(defense, model, inputs, out, fingerprint, attack_run, device, allow_pickle)
    if not measure:
        return {"method": method, "model": record["defended_model"]}
    guard = out if record.get("guard") else None
    unchanged = record["defended_model"] == str(model) and guard is None and defense.stage != "training"
    if unchanged and before is not None:  # the same model on the same rows: "after" is "before"
        after = before
        write_json_atomic(out / AFTER_FILE, {k: v for k, v in before.items() if k != "written_to"})
    else:
        after = ensure_evaluation(record["defended_model"], attack_run, out / AFTER_FILE,  # type: ignore[arg-type]
                                  guard=guard, **eval_options)
    if before is not None and any(before["rows"][split] != after["rows"][split] for split in ("clean", "triggered")):
        raise BackdoorLabError("the 'before' and 'after' evaluations read different rows; evaluate the baseline "
                               f"with --max-rows {max_eval_rows} on the same attack run")
    metrics: dict[str, Any] = {"method": method, "stage": defense.stage, "after": after["metrics"],
                               "rows": {"clean": len(after["rows"]["clean"]),
                                        "triggered": len(after["rows"]["triggered"])},
                               "oracle_knowledge": "oracle" in inputs.given()}
    if before is not None:
        metrics["before"] = before["metrics"]
    else:
        metrics["notes"] = [f"{method} trains a clean pretrained model, so there is no 'before'; pass a baseline "
                            "evaluation of the undefended victim to compare"]
    metrics[FINGERPRINT_KEY] = {"defense": fingerprint, "after": after.get(FINGERPRINT_KEY),
                                "before": before.get(FINGERPRINT_KEY) if before else None}
    write_json_atomic(out / METRICS_FILE, metrics)
    return metrics


@contextmanager
def _released_unless_used(out: Path, fresh: bool) -> Iterator[None]:
    """Remove ``out`` again when the run it was just claimed for fails before writing anything but the
    claim (a bad input found only once the model is loaded), so the corrected command finds no stale claim."""
    try:
        yield
    except BaseException:
        if fresh and out.is_dir() and {p.name for p in out.iterdir()} <= {FOLDER_FINGERPRINT}:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _defense_record(defense: Defense, model: str | Path, inputs: DefenderInputs, out: Path,
                    fingerprint: dict[str, Any], attack_run: str | Path | None, device: str,
                    allow_pickle: bool) -> dict[str, Any]:
    """``defense.json``: reused when this folder already holds it (the folder's fingerprint matched),
    else the defense is applied and its outcome saved."""
    from ..models.loading import load_victim

    path = out / DEFENSE_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    labels = _label_names(inputs, attack_run)
    victim = load_victim(model, label_names=labels, device=device, allow_pickle=allow_pickle)
    started = time.time()
    outcome = defense.apply(victim, inputs, out)
    defended_model = str(out / MODEL_DIR) if outcome.model_changed else str(model)
    if outcome.model_changed:
        outcome.victim.save(out / MODEL_DIR, overwrite=True, extra={"defense": defense.name})
    if outcome.guard is not None:
        save_guard(outcome.guard, out)
    record = {
        "method": defense.name, "stage": defense.stage, "options": defense.options(), "model": str(model),
        "inputs": inputs.describe(), "oracle_knowledge": "oracle" in inputs.given(),
        "measured_on": str(attack_run) if attack_run is not None else None, "defended_model": defended_model,
        "guard": GUARD_FILE if outcome.guard is not None else None, "findings": outcome.findings,
        "seconds": round(time.time() - started, 1), FINGERPRINT_KEY: fingerprint, "environment": environment_info()}
    write_json_atomic(path, record)
    return record


def _label_names(inputs: DefenderInputs, attack_run: str | Path | None) -> list[str] | None:
    """The label set a classifier is loaded with: from the defender's data, else the attack run's."""
    for rows in (inputs.training_data, inputs.clean_rows):
        if rows is not None and rows.label_names:
            return rows.label_names
    if attack_run is not None:
        _, clean, _ = evaluation_rows(attack_run, 0)
        return clean.label_names
    return None


def _baseline(path: Path, attack_run: str | Path, max_rows: int | None) -> dict[str, Any]:
    """A user's evaluation of the undefended model, checked to cover exactly the rows "after" reads."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BackdoorLabError(f"baseline {path} is not valid JSON ({exc.msg})") from None
    _, clean, triggered = evaluation_rows(attack_run, max_rows)
    rows, stored = results.get("rows") or {}, results.get(FINGERPRINT_KEY) or {}
    same_rows = rows.get("clean") == row_ids(clean) and rows.get("triggered") == row_ids(triggered)
    if not same_rows or (stored.get("clean"), stored.get("triggered")) != (dataset_digest(clean), dataset_digest(triggered)):
        raise BackdoorLabError(f"baseline {path} was not measured on the rows this defense is measured on "
                               f"({len(clean)} clean and {len(triggered)} triggered rows of {attack_run}); "
                               f"re-evaluate the undefended model with --max-rows {max_rows} on {attack_run}")
    return results
