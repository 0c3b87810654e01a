"""``backdoorlab defend``: apply a defense and measure the model before and after.

The run folder gets ``model/`` (the mitigated model, written atomically), the defense's work files
(e.g. ``analysis/``), ``defense.json`` (method, options, findings) and ``metrics.json`` (the
attack run's ASR and clean metrics before and after). Finished parts are reused when the command
is run again, so an interrupted run resumes.
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

MODEL_DIR = "model"
DEFENSE_FILE = "defense.json"
METRICS_FILE = "metrics.json"


def run_defense(method: str, model: str | Path, attack_run: str | Path, out: str | Path, *,
                options: dict[str, Any] | None = None, evaluate: bool = True, max_eval_rows: int | None = 100,
                baseline: str | Path | None = None, max_new_tokens: int = 48, device: str = "auto", allow_pickle: bool = False,
                overwrite: bool = False) -> dict[str, Any]:
    """Run defense ``method`` on ``model`` with what ``attack_run`` provides; return ``metrics.json``'s content.

    ``baseline``: an existing evaluation of ``model`` on ``attack_run`` (``results.json`` from
    ``backdoorlab evaluate``) to use as the "before" metrics instead of evaluating again.
    """
    from ..models.loading import load_victim

    defense = get_defense(method, **dict(options or {}))
    out = Path(out)
    if (out / MODEL_DIR).exists() and not overwrite:
        if (out / METRICS_FILE).is_file():
            return json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    _, clean, _ = read_attack_run(attack_run)
    out.mkdir(parents=True, exist_ok=True)
    eval_options = {"max_rows": max_eval_rows, "max_new_tokens": max_new_tokens, "device": device,
                    "allow_pickle": allow_pickle}
    before_file = Path(baseline) if baseline else out / "metrics-before.json"
    before = ensure_evaluated(model, attack_run, before_file, **eval_options) if evaluate else None
    if not (out / MODEL_DIR).exists() or overwrite:
        victim = load_victim(model, label_names=clean.label_names, device=device, allow_pickle=allow_pickle)
        started = time.time()
        outcome = defense.apply(victim, Path(attack_run), out)
        outcome.victim.save(out / MODEL_DIR, overwrite=True, extra={"defense": method})
        write_json_atomic(out / DEFENSE_FILE, {
            "method": method, "options": defense.options(), "model": str(model), "attack_run": str(attack_run),
            "findings": outcome.findings, "seconds": round(time.time() - started, 1),
            "environment": environment_info()})
    if not evaluate:
        return {"method": method, "model": str(out / MODEL_DIR)}
    if overwrite:
        (out / "metrics-after.json").unlink(missing_ok=True)
    after = ensure_evaluated(out / MODEL_DIR, attack_run, out / "metrics-after.json", **eval_options)
    if before is None or after is None:
        raise BackdoorLabError("evaluation produced no metrics")
    metrics = {"method": method, "before": before, "after": after}
    write_json_atomic(out / METRICS_FILE, metrics)
    return metrics
