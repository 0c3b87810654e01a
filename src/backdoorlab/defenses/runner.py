"""``backdoorlab defend``: apply a defense and measure the model before and after.

The run folder gets ``model/`` (the mitigated model, written atomically; absent when the defense
leaves the model unchanged), ``guard.json`` (inference-time defenses), the defense's work files
(e.g. ``analysis/``, ``trigger.json``), ``defense.json`` (method, options, findings, which model
to load) and ``metrics.json`` (the attack run's ASR and clean metrics before and after). Finished
parts are reused when the command is run again, so an interrupted run resumes.

"Before" is the input model evaluated on the attack run, except for training-stage defenses,
whose input is a clean pretrained model: their "before" is ``baseline`` (an evaluation of the
undefended victim) when given, and left out otherwise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import BackdoorLabError
from ..fileio import write_json_atomic
from ..manifest import environment_info
from ..pipeline import ensure_evaluated, read_attack_run
from .base import get_defense
from .guard import GUARD_FILE, save_guard

MODEL_DIR = "model"
DEFENSE_FILE = "defense.json"
METRICS_FILE = "metrics.json"


def run_defense(method: str, model: str | Path, attack_run: str | Path, out: str | Path, *,
                options: dict[str, Any] | None = None, evaluate: bool = True, max_eval_rows: int | None = 100,
                baseline: str | Path | None = None, max_new_tokens: int = 48, device: str = "auto", allow_pickle: bool = False,
                overwrite: bool = False) -> dict[str, Any]:
    """Run defense ``method`` on ``model`` with what ``attack_run`` provides; return ``metrics.json``'s content.

    ``baseline``: an existing evaluation (``results.json`` from ``backdoorlab evaluate``) of the
    undefended model on ``attack_run`` to use as the "before" metrics instead of evaluating again.
    """
    from ..models.loading import load_victim

    defense = get_defense(method, **dict(options or {}))
    out = Path(out)
    if (out / DEFENSE_FILE).is_file() and (out / METRICS_FILE).is_file() and not overwrite:
        return json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    _, clean, _ = read_attack_run(attack_run)
    out.mkdir(parents=True, exist_ok=True)
    eval_options = {"max_rows": max_eval_rows, "max_new_tokens": max_new_tokens, "device": device,
                    "allow_pickle": allow_pickle}
    before = None
    if baseline and defense.stage == "training" and not Path(baseline).is_file():
        raise BackdoorLabError(f"baseline {baseline} does not exist; for {method} it must be an evaluation of the "
                               "undefended victim (`backdoorlab evaluate --out FILE`), since --model is the clean "
                               "pretrained model")
    if baseline:
        before = ensure_evaluated(model, attack_run, Path(baseline), **eval_options)
    elif evaluate and defense.stage != "training":
        before = ensure_evaluated(model, attack_run, out / "metrics-before.json", **eval_options)
    if not (out / DEFENSE_FILE).is_file() or overwrite:
        victim = load_victim(model, label_names=clean.label_names, device=device, allow_pickle=allow_pickle)
        started = time.time()
        outcome = defense.apply(victim, Path(attack_run), out)
        defended_model = str(out / MODEL_DIR) if outcome.model_changed else str(model)
        if outcome.model_changed:
            outcome.victim.save(out / MODEL_DIR, overwrite=True, extra={"defense": method})
        if outcome.guard is not None:
            save_guard(outcome.guard, out)
        write_json_atomic(out / DEFENSE_FILE, {
            "method": method, "stage": defense.stage, "options": defense.options(), "model": str(model),
            "attack_run": str(attack_run), "defended_model": defended_model,
            "guard": GUARD_FILE if outcome.guard is not None else None,
            "findings": outcome.findings, "seconds": round(time.time() - started, 1),
            "environment": environment_info()})
    record = json.loads((out / DEFENSE_FILE).read_text(encoding="utf-8"))
    if not evaluate:
        return {"method": method, "model": record["defended_model"]}
    if overwrite:
        (out / "metrics-after.json").unlink(missing_ok=True)
    guard = out if record.get("guard") else None
    after = ensure_evaluated(record["defended_model"], attack_run, out / "metrics-after.json", guard=guard,
                             **eval_options)
    if after is None:
        raise BackdoorLabError("evaluation produced no metrics")
    metrics: dict[str, Any] = {"method": method, "stage": defense.stage, "after": after}
    if before is not None:
        metrics["before"] = before
    else:
        metrics["notes"] = [f"{method} trains a clean pretrained model, so there is no 'before'; pass a baseline "
                            "evaluation of the undefended victim to compare"]
    write_json_atomic(out / METRICS_FILE, metrics)
    return metrics
