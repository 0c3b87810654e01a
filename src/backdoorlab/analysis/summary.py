"""``summary.md``: one page over whatever analysis steps a folder holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import write_text_atomic

SUMMARY_FILE = "summary.md"


def _load(folder: Path, step: str) -> dict[str, Any] | None:
    path = folder / f"{step}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _probe(result: dict[str, Any]) -> list[str]:
    mlp, svm = result["mlp_accuracy"], result["svm_accuracy"]
    return ["## Backdoor probe", "",
            f"Held-out accuracy over {result['test_pairs']} prompt pairs ({result['train_pairs']} for training). "
            f"Best layer {result['best_layer']}: MLP {_pct(result['best_mlp_accuracy'])}; best SVM "
            f"{_pct(result['best_svm_accuracy'])}.", "",
            "| layer | " + " | ".join(str(i) for i in range(len(mlp))) + " |",
            "|---|" + "---|" * len(mlp),
            "| MLP | " + " | ".join(f"{100 * a:.0f}" for a in mlp) + " |",
            "| SVM | " + " | ".join(f"{100 * a:.0f}" for a in svm) + " |", "",
            "![probe accuracy](probe-accuracy.png) ![transfer](probe-transfer.png)", ""]


def _heads(result: dict[str, Any]) -> list[str]:
    scores = result.get(f"acie_{result['ranked_by']}")
    top = result["ranking"][:10]
    rows = [f"| {i + 1} | ({layer}, {head}) | {scores[layer][head]:+.3g} |" for i, (layer, head) in enumerate(top)]
    lines = ["## Attention-head attribution (ACIE)", "",
             f"{result['attribution_prompts']} clean prompts; mean P(y_bd) without intervention "
             f"{result['base_probability']:.4f}; heads ranked by the {result['ranked_by']} scores.", "",
             "| rank | (layer, head) | ACIE |", "|---|---|---|", *rows, ""]
    if "agreement" in result:
        a = result["agreement"]
        overlaps = ", ".join(f"top-{k[3:-8]} {_pct(v)}" for k, v in a.items() if k.startswith("top"))
        lines += [f"Attribution patching vs exact: Spearman {a['spearman']:.3f}, Pearson {a['pearson']:.3f}; "
                  f"overlap {overlaps}. Time: exact {result.get('exact_seconds')} s, "
                  f"approximation {result.get('approx_seconds')} s.", "", "![exact vs approx](heads-exact-vs-approx.png)"]
    lines += [f"![ACIE heatmap](heads-{result['ranked_by']}.png)", ""]
    return lines


def _ablate(result: dict[str, Any]) -> list[str]:
    utility = next(k for k in result["curve"][0] if k.startswith("clean_"))
    rows = [f"| {p['k']} | {_pct(p['fraction'])} | {_pct(p['asr'])} | {p[utility]:.3f} |" for p in result["curve"]]
    lines = ["## Head ablation", "", f"Mode: {result['mode']} at the readout token.", "",
             f"| heads | share | ASR | {utility.replace('_', ' ')} |", "|---|---|---|---|", *rows, ""]
    for point in result.get("everywhere", []):
        lines += [f"Top {point['k']} heads ablated at every position and decoding step → ASR {_pct(point['asr'])}, "
                  f"{utility.replace('_', ' ')} {point[utility]:.3f}.", ""]
    if "random_control" in result:
        c = result["random_control"]
        lines += [f"Control: {c['k']} random heads ablated → ASR {_pct(c['asr'])}, "
                  f"{utility.replace('_', ' ')} {c[utility]:.3f}.", ""]
    return lines + ["![ablation](ablation.png)", ""]


def _vector(result: dict[str, Any]) -> list[str]:
    base, head = result["baseline"], result["headline"]
    return ["## Backdoor vector", "",
            f"v = sum of {len(result['heads'])} top heads' triggered mean contributions (|v| = "
            f"{result['vector_norm']:.2f}). Without intervention: ASR {_pct(base['asr_triggered'])} on triggered, "
            f"{_pct(base['asr_clean'])} on clean prompts.", "",
            f"Best layer to switch it on (clean + v): {head['best_layer_on']} → ASR {_pct(head['asr_on'])}. "
            f"Best layer to switch it off (triggered − v), ties broken by clean utility: {head['best_layer_off']} → "
            f"ASR {_pct(head['asr_off'])}.",
            "", *_vector_control(result.get("random_control")), "![vector](vector.png)", ""]


def _vector_control(control: dict[str, Any] | None) -> list[str]:
    if not control:
        return []
    return [f"Control, a random vector of the same norm: clean + r at layer {control['layer_on']} → ASR "
            f"{_pct(control['asr_clean_plus_random'])}; triggered − r at layer {control['layer_off']} → ASR "
            f"{_pct(control['asr_triggered_minus_random'])}.", ""]


SECTIONS = {"probe": _probe, "heads": _heads, "ablate": _ablate, "vector": _vector}


def write_summary(folder: str | Path) -> Path:
    """(Re)write ``summary.md`` from the step JSON files present in ``folder``."""
    folder = Path(folder)
    results = {step: r for step in SECTIONS if (r := _load(folder, step)) is not None}
    first = next(iter(results.values()), {})
    lines = [f"# Backdoor attribution: {first.get('model', '?')} on {first.get('attack_run', '?')}", "",
             f"Behaviour: {first.get('behaviour', '?')}; {first.get('pairs', '?')} clean/triggered prompt pairs.", ""]
    for step, result in results.items():
        lines += SECTIONS[step](result)
    return write_text_atomic(folder / SUMMARY_FILE, "\n".join(lines))
