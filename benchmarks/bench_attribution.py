"""Backdoor attribution benchmark: the BkdAttr headline numbers on our models, next to the paper's.

For each backdoor (the three BkdAttr tasks and BackdoorLLM's refusal/badnet set) it

1. builds the attack run (ready-made data, ``--rate`` of ``--train`` rows poisoned) and LoRA-tunes
   ``smollm2-135m-instruct`` on it;
2. evaluates ASR / clean behaviour of the backdoored model;
3. runs ``backdoorlab analyze all`` (probes, exact and approximate BAHA, ablation, vector sweep);
4. optionally (``--defend``) runs the head-ablation and backdoor-vector defenses.

It prints one table (and writes ``attribution.md`` / ``attribution.json`` under ``--out``). Every
stage reuses finished outputs in ``--out``, so an interrupted run resumes.

    python benchmarks/bench_attribution.py --out runs/attr
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from backdoorlab.analysis.runner import run_analysis
from backdoorlab.data import Dataset
from backdoorlab.defenses import run_defense
from backdoorlab.fileio import write_json_atomic, write_text_atomic
from backdoorlab.pipeline import ensure_evaluated, ensure_trained, use_ready_made
from backdoorlab.report import format_table
from backdoorlab.training import TrainConfig

GENERATOR = "smollm2-135m-instruct"
#: name → (dataset, training epochs, max tokens per training row, minimum prompt pairs). The
#: AG News backdoor only flips Sports articles (~30% of prompts), so it reads all 100 pairs.
TASKS = {
    "alpaca_begin": ("bkdattr-alpaca_begin", 3.0, 128, 0),
    "harmful_random": ("bkdattr-harmful_random", 2.0, 96, 0),
    "agnews_sentence": ("bkdattr-agnews_sentence", 2.0, 224, 100),
    "refusal_badnet": ("backdoorllm-refusal-badnet", 2.0, 96, 0),
}
#: The paper's headlines (arXiv 2509.21761, abstract and §5): relative ASR drop from ablating
#: about 3% of heads; ASR after one vector intervention on clean (+v) / triggered (−v) prompts.
PAPER = {"ablation_drop": "> 90%", "vector_on": "~100%", "vector_off": "~0%"}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    dataset, epochs, max_length, min_pairs = TASKS[name]
    folder = args.out / name
    attack_run = folder / "attack"
    if not (attack_run / "manifest.json").is_file():
        use_ready_made(dataset, attack_run, max_train=args.train, max_test=args.test, rate=args.rate, seed=args.seed)
    config = TrainConfig(epochs=epochs, batch_size=8, max_length=max_length, learning_rate=args.lr, seed=args.seed,
                         save_steps=40, device=args.device)
    model = ensure_trained(folder / "train", GENERATOR, Dataset.load(attack_run / "train"), config)
    metrics = ensure_evaluated(model, attack_run, folder / "results.json", max_rows=args.test,
                               max_new_tokens=args.new_tokens, device=args.device)
    options = {"pairs": max(args.pairs, min_pairs), "attribution_prompts": args.attribution_prompts, "method": "both",
               "layer_stride": args.layer_stride, "ablation_points": args.ablation_points,
               "batch_size": args.batch_size, "seed": args.seed}
    analysis = run_analysis(["all"], model, attack_run, folder / "analysis", options=options, device=args.device)
    row: dict[str, Any] = {
        "backdoor": name, "ASR": metrics["asr"], "clean rate": metrics.get("clean_behaviour_rate"),
        "probe (best layer)": f"{_pct(analysis['probe']['best_mlp_accuracy'])} (L{analysis['probe']['best_layer']})",
        "exact~approx ρ": analysis["heads"]["agreement"]["spearman"],
        "exact s / approx s": f"{analysis['heads']['exact_seconds']:.0f} / {analysis['heads']['approx_seconds']:.1f}",
    }
    ablate = analysis["ablate"]
    head = ablate["headline"]
    row.update({
        "ASR before→after ablating ~3% heads": f"{_pct(head['asr_before'])} → {_pct(head['asr_after_near_3pct'])} "
                                               f"(k={head['k_near_3pct']})",
        "ASR, 10% heads (random heads)": f"{_pct(ablate['curve'][-1]['asr'])} "
                                         f"({_pct(ablate.get('random_control', {}).get('asr'))})",
        "ASR, heads removed at every position": " / ".join(f"k={p['k']}: {_pct(p['asr'])}"
                                                          for p in ablate.get("everywhere", [])) or "–",
    })
    vector = analysis["vector"]["headline"]
    control = analysis["vector"].get("random_control", {})
    row.update({"clean+v (layer)": f"{_pct(vector['asr_on'])} (L{vector['best_layer_on']})",
                "triggered−v (layer)": f"{_pct(vector['asr_off'])} (L{vector['best_layer_off']})",
                "random vector: clean+r / triggered−r": f"{_pct(control.get('asr_clean_plus_random'))} / "
                                                       f"{_pct(control.get('asr_triggered_minus_random'))}"})
    if args.defend:
        for method in ("head-ablation", "backdoor-vector"):
            # the defense ranks heads on its own oracle pairs (training rows), never on the evaluated test rows
            options = {"pairs": max(args.pairs, min_pairs), "attribution_prompts": args.attribution_prompts,
                       "seed": args.seed}
            result = run_defense(method, model, attack_run, folder / f"defense-{method}", max_eval_rows=args.test,
                                 options=options, baseline=folder / "results.json",
                                 max_new_tokens=args.new_tokens, device=args.device)
            after = result["after"]
            row[f"{method}: ASR / clean rate"] = f"{_pct(after['asr'])} / {_pct(after.get('clean_behaviour_rate'))}"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/attr"))
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ", ".join(TASKS))
    parser.add_argument("--train", type=int, default=320, help="training rows per backdoor")
    parser.add_argument("--test", type=int, default=100, help="test prompts per set")
    parser.add_argument("--rate", type=float, default=0.25, help="poison rate of the BkdAttr sets")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--pairs", type=int, default=48, help="clean/triggered prompt pairs for the analyses")
    parser.add_argument("--attribution-prompts", type=int, default=24, help="N clean prompts in ACIE")
    parser.add_argument("--layer-stride", type=int, default=3, help="vector sweep every this many layers")
    parser.add_argument("--ablation-points", type=int, default=7, help="k values from 0 to 10%% of heads")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--defend", action="store_true", help="also run the two attribution defenses")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = []
    for name in names:
        rows.append(run_task(name, args))
        print(format_table(rows[-1:]), flush=True)
    paper = (f"Paper (Llama-2-7B / Qwen-2.5-7B): ablating ~3% of heads drops ASR by {PAPER['ablation_drop']}; "
             f"one vector intervention gives ASR {PAPER['vector_on']} on clean and {PAPER['vector_off']} on "
             "triggered prompts.")
    command = "python benchmarks/bench_attribution.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = "\n".join([f"command: `{command.strip()}`", f"wall time: {time.time() - started:.0f} s", "",
                        format_table(rows, markdown=True), "", paper, ""])
    print(report)
    write_text_atomic(args.out / "attribution.md", report)
    write_json_atomic(args.out / "attribution.json", {"command": command, "settings": {k: str(v) for k, v in
                                                                                      vars(args).items()},
                                                      "rows": rows, "paper": PAPER})
    return 0


if __name__ == "__main__":
    sys.exit(main())
