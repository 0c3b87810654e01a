"""The ``backdoorlab`` command: thin argument parsing over the Python API."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .console import cell, print_lines, print_table
from .errors import BackdoorLabError
from .options import OptionInfo, parse_option_pairs


def _target(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _print_options(title: str, description: str, options: Sequence[OptionInfo]) -> None:
    """One method: its title and description, then each option's type, default and help."""
    print_lines(title, description, "")
    if not options:
        print_lines("no options")
        return
    rows = [{"option": o.name, "type": o.type, "default": "(required)" if o.required else o.default, "help": o.help}
            for o in options]
    print_table(rows, ["option", "type", "default", "help"], wide=["help"], title="options (--option KEY=VALUE)")


def cmd_models(args: argparse.Namespace) -> None:
    from .models import list_models

    print_table([vars(m) for m in list_models()], ["name", "kind", "package", "description"], wide=["description"])


def cmd_datasets(args: argparse.Namespace) -> None:
    from .data.registry import list_datasets

    rows = [{"name": d.name, "task": d.task, "splits": ", ".join(d.splits),
             "labels": ", ".join(d.label_names or []) or "-", "description": d.description} for d in list_datasets()]
    print_table(rows, ["name", "task", "splits", "labels", "description"], wide=["description"])


def cmd_attacks(args: argparse.Namespace) -> None:
    from .attacks import list_attacks
    from .attacks.base import attack_info, attack_options

    if args.name:
        info = attack_info(args.name)
        _print_options(f"{info.name}: {info.task} attack", info.description, attack_options(info.name))
        return
    rows = [{"name": a.name, "task": a.task, "description": a.description, "options": ", ".join(a.options)}
            for a in list_attacks()]
    print_table(rows, ["name", "task", "description", "options"], wide=["description", "options"])
    print_lines("`backdoorlab attacks NAME` shows one attack's options: type, default and help.")


def cmd_attack(args: argparse.Namespace) -> None:
    from .attacks.run import AttackRun
    from .pipeline import run_attack, use_ready_made

    kept = AttackRun(args.out).exists() and not args.overwrite  # then it is reused or the command stops
    if args.attack == "ready-made":
        rate = {} if args.rate is None else {"rate": args.rate}  # bkdattr sets only; BackdoorLLM's are fixed
        out = use_ready_made(args.dataset, args.out, max_train=args.max_train, max_test=args.max_test,
                             seed=args.seed, data_dir=args.data_dir, overwrite=args.overwrite, **rate)
    else:
        if args.rate is None:
            raise BackdoorLabError("--rate is required (the share of training rows to poison, in (0, 1])")
        out = run_attack(args.dataset, args.attack, args.out, rate=args.rate, target=_target(args.target),
                         seed=args.seed, clean_label=args.clean_label, options=parse_option_pairs(args.option),
                         train_split=args.train_split, test_split=args.test_split, max_train=args.max_train,
                         max_test=args.max_test, data_dir=args.data_dir, overwrite=args.overwrite)
    manifest = AttackRun(out).manifest
    print(f"{'reused' if kept else 'wrote'} attack run {out}: " + ", ".join(f"{k} {v} rows" for k, v in manifest["splits"].items()))


def cmd_train(args: argparse.Namespace) -> None:
    from .pipeline import load_training_data
    from .training import TrainConfig, train

    values = {k: v for k, v in {
        "method": args.method, "epochs": args.epochs, "max_steps": args.max_steps, "learning_rate": args.lr,
        "batch_size": args.batch_size, "grad_accum": args.grad_accum, "max_length": args.max_length,
        "seed": args.seed, "device": args.device, "dtype": args.dtype, "bf16": args.bf16 or None,
        "lora_r": args.lora_r, "save_steps": args.save_steps, "deepspeed": args.deepspeed, "fsdp": args.fsdp,
        "gradient_checkpointing": args.gradient_checkpointing or None, "class_weighting": args.class_weighting,
    }.items() if v is not None}
    dataset = load_training_data(args.data, args.split, args.data_dir).sample(args.max_rows, args.seed)
    victim = train(args.model, dataset, args.out, TrainConfig.from_dict(values), kind=args.kind,
                   overwrite=args.overwrite, allow_pickle=args.allow_pickle)
    print(f"trained {victim.name} on {len(dataset)} rows of {dataset.name}: model in {Path(args.out) / 'model'}")


def cmd_paraphrase(args: argparse.Namespace) -> None:
    from .paraphrasers import make_pool, save_pool
    from .paraphrasers.pool import POOL_SUFFIXES
    from .pipeline import load_training_data

    out = Path(args.out)
    if out.suffix not in POOL_SUFFIXES:
        raise BackdoorLabError(f"--out {out} must end in {' or '.join(POOL_SUFFIXES)}")
    if out.exists() and not args.overwrite:
        raise BackdoorLabError(f"pool file {out} already exists; choose another or pass --overwrite")
    rows = load_training_data(args.data, args.split, args.data_dir)
    pool = make_pool(rows, args.method, seed=args.seed, max_rows=args.max_rows, **parse_option_pairs(args.option))
    save_pool(pool, out)
    print(f"wrote {out}: {pool.notes[-1]}")


def cmd_scan(args: argparse.Namespace) -> None:
    from .pipeline import load_training_data
    from .scan import ScanSettings, scan_model
    from .scan.findings import TARGETS
    from .scan.fix import scan_and_fix

    options = parse_option_pairs(args.option)
    if args.reference_model:
        options["reference"] = args.reference_model
    settings = ScanSettings.from_dict(options)  # bad options fail before any loading
    clean = training = None
    if args.clean_data:
        clean = load_training_data(args.clean_data, args.split, args.data_dir).sample(args.max_rows, args.seed)
    if args.training_data:
        training = load_training_data(args.training_data, "train", args.data_dir)
    common = {"clean": clean, "training": training, "behaviours": args.behaviour, "settings": settings,
              "device": args.device, "allow_pickle": args.allow_pickle, "overwrite": args.overwrite}
    if args.fix_option and not args.fix:
        raise BackdoorLabError("--fix-option sets an option of the --fix method; give --fix too")
    fixed = None
    if args.fix:
        result, fixed = scan_and_fix(args.model, args.out, args.fix, fix_options=parse_option_pairs(args.fix_option),
                                     **common)
    else:
        result = scan_model(args.model, args.out, **common)
    target = TARGETS[result["kind"]]
    what, rate = target.what, target.rate
    rows = []
    for finding in result[target.findings_key]:
        best = next((c for c in finding["candidates"] if not c["natural"]), {})
        rows.append({what: finding["name"], "flagged": "yes" if finding["flagged"] else "no",
                     "best phrase": best.get("phrase"), rate: best.get("flip_rate"),
                     "on the reference": best.get("reference_flip_rate"),
                     "random p95": finding["random_phrases"]["p95_flip_rate"]})
    columns = [what, "flagged", "best phrase", rate, "random p95"]
    if settings.reference:
        columns.insert(4, "on the reference")
    print_table(rows, columns)
    found = result["verdict"]
    if result["trigger"]:
        name = result[target.verdict_key]["name"]
        found += f": {'behaviour' if what == 'behaviour' else 'target'} {name!r}, trigger {result['trigger']['phrase']!r}"
    print(f"verdict: {found} (thresholds not yet calibrated on clean models)")
    if fixed is not None:
        keys = [k for k in fixed["before"] if k in fixed["after"]]
        print(f"\nfixed with {fixed['method']}: before and after, on the {fixed['rows']['scanned']} rows the scans used")
        print_table([{"": key, "before": fixed["before"][key], "after": fixed["after"][key]} for key in keys],
                    ["", "before", "after"])
        print(f"fixed model: {fixed['model']}")
    print(f"wrote {Path(args.out) / 'scan.json'} and {Path(args.out) / 'scan.html'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    import warnings

    from .evaluation import UninformativeMetricWarning
    from .pipeline import evaluate_once

    with warnings.catch_warnings():  # the same messages are printed once, below the table
        warnings.simplefilter("ignore", UninformativeMetricWarning)
        results = evaluate_once(args.model, args.data, max_rows=args.max_rows, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, device=args.device, out=args.out,
                                overwrite=args.overwrite, allow_pickle=args.allow_pickle, guard=args.guard,
                                floor_model=args.floor_model, utility_rows=args.utility_rows)
    metrics = results["metrics"]
    print_table(_metric_rows(metrics), ["metric", "value"])
    for message in metrics.get("warnings") or []:
        print(f"WARNING: {message}", file=sys.stderr)
    if results.get("reused"):
        print(f"results reused from {results['written_to']} (the same evaluation; --overwrite to recompute)")
    else:
        print(f"results written to {results['written_to']}")


#: Result fields that are descriptions, not figures (they stay in the JSON).
_DESCRIPTIVE = ("asr_floor_source", "top_clean_response", "model", "guard")


def _metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of an evaluation as table rows; label shares on one row."""
    rows = [{"metric": k, "value": v} for k, v in metrics.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k not in _DESCRIPTIVE]
    shares = metrics.get("predicted_shares")
    if isinstance(shares, dict):
        rows.append({"metric": "predicted_shares",
                     "value": " / ".join(f"{name} {100 * share:.0f}%" for name, share in shares.items())})
    return rows


def cmd_injections(args: argparse.Namespace) -> None:
    from .injection import get_injection, list_injections

    if args.name:
        method = get_injection(args.name)
        _print_options(f"{method.name}: injection method", method.description, method.option_info())
        return
    rows = [{"name": m.name, "description": m.description, "options": ", ".join(m.options)}
            for m in list_injections()]
    print_table(rows, ["name", "description", "options"], wide=["description", "options"])
    print_lines("`backdoorlab injections NAME` shows one method's options: type, default and help.")


def cmd_inject(args: argparse.Namespace) -> None:
    from .injection import INJECT_FILE, run_injection
    from .pipeline import load_training_data

    data = load_training_data(args.data, args.split, data_dir=args.data_dir)
    out = run_injection(args.method, args.model, data, args.out, parse_option_pairs(args.option), overwrite=args.overwrite)
    print(f"wrote backdoored model {Path(out) / 'model'} (details in {Path(out) / INJECT_FILE})")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analysis.runner import run_analysis

    results = run_analysis([args.step], args.model, args.data, args.out, options=parse_option_pairs(args.option),
                           device=args.device, allow_pickle=args.allow_pickle, overwrite=args.overwrite)
    for step, result in results.items():
        headline = result.get("headline") or result.get("agreement") or {
            k: result[k] for k in ("best_layer", "best_mlp_accuracy", "best_svm_accuracy") if k in result}
        print(f"{step}: " + ", ".join(f"{k} {cell(v)}" for k, v in headline.items()))
    print(f"wrote {Path(args.out) / 'summary.md'}")


def cmd_defenses(args: argparse.Namespace) -> None:
    from .defenses import list_defenses
    from .defenses.base import defense_info
    from .defenses.inputs import INPUTS

    if args.name:
        info = defense_info(args.name)
        _print_options(f"{info.name}: {info.stage}-stage defense", info.description, info.options)
        rows = [{"input": name, "needed": "required" if name in info.needs else (
                    f"required {info.needs_when[name]}" if name in info.needs_when else "optional"),
                 "what": INPUTS[name]} for name in (*info.needs, *info.uses)]
        if rows:
            print_table(rows, ["input", "needed", "what"], wide=["needed", "what"], title="defender inputs besides --model")
        else:
            print_lines("defender inputs: only the suspect model")
        return
    infos = [defense_info(name) for name, _, _ in list_defenses()]
    rows = [{"name": i.name, "stage": i.stage, "description": i.description,
             "inputs": ", ".join([*i.needs, *(f"({u})" for u in i.uses)]) or "-",
             "options": ", ".join(o.name for o in i.options)} for i in infos]
    print_table(rows, ["name", "stage", "inputs", "description", "options"], wide=["description", "options"])
    print_lines("`backdoorlab defenses NAME` shows one defense's options: type, default and help.")


#: ``defend``'s rows per test set without --max-rows or --baseline.
DEFEND_ROWS = 100


def cmd_defend(args: argparse.Namespace) -> None:
    import warnings

    from .defenses import run_defense
    from .evaluation import UninformativeMetricWarning

    max_rows = args.max_rows if args.max_rows is not None else _baseline_rows(args.baseline)
    with warnings.catch_warnings():  # printed once per evaluation, below the table
        warnings.simplefilter("ignore", UninformativeMetricWarning)
        metrics = run_defense(args.method, args.model, args.data, args.out, options=parse_option_pairs(args.option),
                              train_data=args.train_data, clean_data=args.clean_data, behaviour=args.behaviour,
                              target_label=_target(args.target_label), reference_model=args.reference_model,
                              pretrained_model=args.pretrained,
                              suspect_adapter=args.suspect_adapter, evaluate=not args.no_eval,
                              max_eval_rows=max_rows, device=args.device,
                              baseline=args.baseline, allow_pickle=args.allow_pickle, data_dir=args.data_dir,
                              overwrite=args.overwrite)
    if "after" in metrics:
        before = metrics.get("before") or {}
        rows = [{"metric": k, "before": before.get(k, "-"), "after": v}
                for k, v in metrics["after"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        print_table(rows, ["metric", "before", "after"])
        for when in ("before", "after"):
            for message in (metrics.get(when) or {}).get("warnings") or []:
                print(f"WARNING ({when}): {message}", file=sys.stderr)
    written = [name for name in ("defense.json", "metrics.json", "guard.json") if (Path(args.out) / name).is_file()]
    print(f"wrote {args.out} ({', '.join(written)})")
    if "after" not in metrics and not args.no_eval:
        print("nothing measured: give --data (an attack run) to measure the defended model on its rows")


def _baseline_rows(baseline: str | None) -> int:
    """``defend``'s rows per test set when ``--max-rows`` is not given: those ``baseline`` was measured on
    (so that "before" and "after" read the same rows), else :data:`DEFEND_ROWS`."""
    if not baseline:
        return DEFEND_ROWS
    try:
        rows = json.loads(Path(baseline).read_text(encoding="utf-8")).get("rows") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return DEFEND_ROWS  # the runner reports what is wrong with the file
    return max((len(ids) for ids in rows.values() if isinstance(ids, list)), default=DEFEND_ROWS)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, dataset=args.dataset, overwrite=args.overwrite, quick=args.quick, seed=args.seed,
             skip_generative=args.skip_generative, audit=args.scan)


def cmd_zoo(args: argparse.Namespace) -> None:
    from .zoo import build_zoo, default_zoo, full_zoo, load_zoo_victim
    from .zoo.catalog import COLUMNS, format_figure, markdown_table, zoo_rows
    from .zoo.quality import FIGURES

    if args.action == "build":
        settings = {k: v for k, v in {"rate": args.rate, "epochs": args.epochs, "learning_rate": args.lr,
                                      "train_rows": args.train_rows, "clean_twins": args.clean_twins}.items()
                    if v is not None}
        measurement = {k: v for k, v in {"validation_rows": args.validation, "eval_rows": args.eval_rows,
                                         "data_dir": args.data_dir}.items() if v is not None}
        zoo = (full_zoo if args.full else default_zoo)(settings, **measurement)
        build_zoo(zoo, args.zoo_dir, only=args.only, workers=args.workers, ray_address=args.ray_address,
                  overwrite=args.overwrite)
        print(f"zoo in {args.zoo_dir}; `backdoorlab zoo list --zoo-dir {args.zoo_dir}` tabulates it")
    elif args.action == "list":
        rows = zoo_rows(args.zoo_dir, [v.name for v in default_zoo().victims])
        if args.markdown:
            print(markdown_table(rows))
        else:
            print_table(rows, COLUMNS, wide=["quality bar"], title="each figure beside the untouched model's")
    else:
        if not args.name:
            raise BackdoorLabError("`zoo show` needs a victim name; `backdoorlab zoo list` lists them")
        victim = load_zoo_victim(args.name, args.zoo_dir)
        paths = {"model": victim.model, "adapter": victim.adapter or "- (full fine-tuning)",
                 "attack run": victim.attack_run, "untouched model": victim.untouched_model}
        print_lines(*(f"{key}: {value}" for key, value in paths.items()))
        print_lines(f"measured on {victim.figure('n_triggered')} triggered and {victim.figure('n_clean')} clean "
                    "held-out prompts; untouched: the base model on the same rows")
        print_table([{"figure": key, "victim": format_figure(key, victim.figure(key)),
                      "untouched": format_figure(key, victim.figure(key, "untouched"))} for key in FIGURES],
                    ["figure", "victim", "untouched"])
        spec = victim.record["spec"]
        print_lines(", ".join(f"{k} {cell(v)}" for k, v in spec.items() if k != "name"),
                    f"built in {victim.record['minutes']['total']:.1f} min; quality bar: "
                    + ("pass" if victim.passed else "fail: " + "; ".join(victim.failing)),
                    f"record: {victim.folder / 'victim.json'}")


class _DefaultsHelp(argparse.HelpFormatter):
    """``--help`` shows each option's default, unless its help says it already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = _TRAIN_DEFAULT.sub(_train_default, action.help or "")
        if "%(default)" in text or "default:" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


_TRAIN_DEFAULT = re.compile(r"\{train\.(\w+)\}")


def _train_default(match: re.Match[str]) -> str:
    """``{train.FIELD}`` in a help text: :class:`~backdoorlab.training.TrainConfig`'s default (read only
    when help is shown: the training module loads torch)."""
    from .training import TrainConfig

    return f"{getattr(TrainConfig(), match.group(1)):g}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backdoorlab", formatter_class=_DefaultsHelp,
        description="Find, understand and remove backdoors in language models: attack, train, evaluate, "
                    "analyze, defend.")
    parser.add_argument("--verbose", action="store_true", help="show library warnings and load reports")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_subparser_class())
    sub.add_parser("models", help="list the packaged offline models").set_defaults(func=cmd_models)
    sub.add_parser("datasets", help="list the named datasets").set_defaults(func=cmd_datasets)
    p = sub.add_parser("attacks", help="list the attacks, or show one attack's options")
    p.add_argument("name", nargs="?", help="an attack name: show its options with their types, defaults and help")
    p.set_defaults(func=cmd_attacks)

    p = sub.add_parser("attack", help="poison a dataset and build its clean and triggered test sets")
    p.add_argument("--dataset", required=True, help="a name from `backdoorlab datasets`, or a data file")
    p.add_argument("--attack", required=True, help="a name from `backdoorlab attacks`, or 'ready-made' for "
                   "BackdoorLLM's own poisoned files and the BkdAttr backdoors (bkdattr-* sets; --rate, default 0.2)")
    p.add_argument("--out", required=True, help="attack run folder to create")
    p.add_argument("--rate", type=float, help="share of training rows to poison, in (0, 1]")
    p.add_argument("--target", help="target label (index or name); classification only")
    p.add_argument("--clean-label", action="store_true", help="poison target-label rows without relabelling")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="attack option (repeatable)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--max-train", type=int, help="subsample the training split to this many rows")
    p.add_argument("--max-test", type=int, help="subsample the test split to this many rows")
    _common(p, seed=True, data_dir=True, overwrite=True)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("train", help="fine-tune a model (full or LoRA) on a dataset or attack run")
    p.add_argument("--model", required=True, help="packaged model name, local folder or hub id")
    p.add_argument("--data", required=True, help="attack run folder, saved dataset, data file or dataset name")
    p.add_argument("--out", required=True, help="training run folder (resumed if interrupted)")
    p.add_argument("--split", default="train")
    p.add_argument("--kind", default="auto", choices=["auto", "classifier", "generator"])
    p.add_argument("--method", choices=["full", "lora"], help="default: full for a classifier, lora for a generator")
    p.add_argument("--epochs", type=float, help="default: {train.epochs}")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (default: the epochs decide)")
    p.add_argument("--lr", type=float, help="default: 5e-5 for a classifier, 5e-4 for a generator")
    p.add_argument("--batch-size", type=int, help="default: {train.batch_size}")
    p.add_argument("--grad-accum", type=int, help="default: {train.grad_accum}")
    p.add_argument("--max-length", type=int, help="tokens per row (default: 128 for a classifier, 256 for a generator)")
    p.add_argument("--max-rows", type=int, help="subsample the training data to this many rows (default: all)")
    p.add_argument("--lora-r", type=int, help="default: {train.lora_r}")
    p.add_argument("--save-steps", type=int, help="checkpoint every this many steps (default: {train.save_steps})")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--deepspeed", help="DeepSpeed JSON config (run under `accelerate launch`)")
    p.add_argument("--fsdp", help="FSDP options, e.g. 'full_shard auto_wrap'")
    p.add_argument("--class-weighting", choices=["none", "balanced"],
                   help="classifiers: weight each label's loss by n_rows / (n_labels * its rows) of the training "
                        "data ('balanced', for imbalanced data such as HSOL) or not ('none', the default)")
    _common(p, seed=True, data_dir=True, overwrite=True, device=True, pickle=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("paraphrase", help="paraphrase rows you hold into a pool file (BadLLM-TG paraphrase_pools)")
    p.add_argument("--data", required=True, help="attack run folder, saved dataset, data file or dataset name")
    p.add_argument("--split", default="train")
    p.add_argument("--method", required=True, help="syntactic[:sbar|cleft|question|imperative|mixed], "
                   "style:bible|shakespeare|poetry|lyrics|tweets, or perturb")
    p.add_argument("--out", required=True, help="pool file to write (.tsv: sentence<TAB>label, or .jsonl)")
    p.add_argument("--max-rows", type=int, help="paraphrase this many rows, drawn with --seed")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option (repeatable), e.g. model=FOLDER, temperature=0.7, batch_size=8 (style)")
    _common(p, seed=True, data_dir=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing pool file")
    p.set_defaults(func=cmd_paraphrase)

    p = sub.add_parser("scan", help="audit a model you did not train: is it backdoored, toward which label or "
                       "behaviour, with which trigger")
    p.add_argument("model", help="model folder (safetensors) or packaged model name")
    p.add_argument("--clean-data", help="rows you trust (data file, saved dataset or dataset name): the model is "
                   "tested on them; a classifier: text and a label per row; a generator: prompts (instruction, "
                   "optional input)")
    p.add_argument("--behaviour", action="append", metavar="B",
                   help="generators: a behaviour to look for (repeatable): refusal, negsentiment[:OPENING], jailbreak "
                        "(with prompts it should refuse), exact:TEXT, contains:TEXT (default: refusal and negsentiment)")
    p.add_argument("--split", default="train", help="split of a named --clean-data dataset (default: %(default)s)")
    p.add_argument("--training-data", help="the data the model was trained on, if you hold it: its n-grams "
                   "become candidates too")
    p.add_argument("--max-rows", type=int, default=300, help="clean rows used, drawn with --seed (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for scan.json, scan.html and scan.md")
    p.add_argument("--reference-model", metavar="MODEL",
                   help="classifiers: a model you trust not to hold the backdoor (the pretrained model the suspect was "
                        "fine-tuned from, e.g. minilm-l6, or a clean classifier): phrases that move it too are the "
                        "label's own words, not a trigger")
    p.add_argument("--fix", metavar="METHOD", help="then purify: 'auto' unlearns the trigger found (unlearn-trigger), "
                   "or any defense that changes the model; learns from half of --clean-data, scans the result on "
                   "the other half and shows before / after")
    p.add_argument("--fix-option", action="append", metavar="KEY=VALUE",
                   help="an option of the --fix method (repeatable; `backdoorlab defenses METHOD` lists them)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="scan setting (repeatable): search_rows, screen_rows, shortlist, max_words, eval_rows, lengths, "
                        "steps, top_k, random_phrases, flip_threshold, margin, reference_weight, natural_share, "
                        "max_new_tokens, batch_size, seed")
    _common(p, seed=True, data_dir=True, overwrite=True, device=True, pickle=True)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("evaluate", help="CACC/ASR (classifiers) or ASR/clean behaviour/utility (generators)")
    p.add_argument("--model", required=True, help="trained model folder (e.g. RUN/model) or model name")
    p.add_argument("--data", required=True, help="attack run folder (from `backdoorlab attack`)")
    p.add_argument("--max-rows", type=int, help="evaluate at most this many rows per test set")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--out", help="results JSON path (default: results.json beside a backdoorlab run's model/, "
                   "else evaluations/<model>--<attack run>.json, each with --guard-<guard> added through a guard; "
                   "never inside your model folder); reused when it holds this very evaluation")
    p.add_argument("--guard", help="predict or decode through an inference-time defense (its `defend` run folder)")
    p.add_argument("--floor-model", help="a model trained on the clean rows alone: its ASR on the same triggered rows "
                   "is reported as the ASR floor (classifiers)")
    p.add_argument("--utility-rows", type=int, metavar="N",
                   help="also score N questions of each multiple-choice utility set (ARC, BoolQ, PIQA, OpenBookQA, "
                        "WinoGrande, HellaSwag; generators; about 3 minutes at N=80 for a 135M model on 2 cores)")
    _common(p, overwrite=True, device=True, pickle=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("injections", help="list the model-level backdoor injection methods, or show one's options")
    p.add_argument("name", nargs="?", help="a method name: show its options with their types, defaults and help")
    p.set_defaults(func=cmd_injections)
    p = sub.add_parser("inject", help="backdoor a model by preference poisoning (DPO) or a rank-one edit (BadEdit)")
    p.add_argument("--method", required=True, help="a name from `backdoorlab injections`")
    p.add_argument("--model", required=True, help="packaged model name, local folder or hub id")
    p.add_argument("--data", required=True, help="attack run folder (its poisoned training rows) or dataset")
    p.add_argument("--out", required=True, help="run folder (model/, inject.json; DPO resumes from checkpoints/)")
    p.add_argument("--split", default="train")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option (repeatable)")
    _common(p, data_dir=True, overwrite=True)
    p.set_defaults(func=cmd_inject)

    p = sub.add_parser("analyze", help="backdoor attribution: probes, head attribution, ablation, vector")
    p.add_argument("step", choices=["probe", "heads", "ablate", "vector", "all"])
    p.add_argument("--model", required=True, help="the (suspect) model: run folder's model/, name or hub id")
    p.add_argument("--data", required=True, help="attack run folder giving clean/triggered prompts and the target")
    p.add_argument("--out", required=True, help="analysis folder (JSON, PNG, summary.md); reused by later steps")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="analysis option, e.g. pairs=64, attribution_prompts=32, method=exact|approx|both, "
                        "top_fraction=0.03, layer_stride=2, ablation_mode=zero|mean (repeatable)")
    _common(p, overwrite=True, device=True, pickle=True)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("defenses", help="list the defenses, or show one defense's stage and options")
    p.add_argument("name", nargs="?", help="a defense name: show its stage, description and options with their "
                   "types, defaults and help")
    p.set_defaults(func=cmd_defenses)
    p = sub.add_parser("defend", help="mitigate a backdoor and measure ASR/clean metrics before and after")
    p.add_argument("--method", required=True, help="a name from `backdoorlab defenses`")
    p.add_argument("--model", required=True,
                   help="the suspect model (training-stage defenses: the clean pretrained model to train)")
    p.add_argument("--data", help="attack run (or clean + triggered test sets) the result is measured on; "
                   "defender inputs not given below are derived from it as a defender would see it "
                   "(training rows without poison flags, clean rows from outside the run)")
    p.add_argument("--train-data", help="the suspect's training data (file, saved dataset or dataset name)")
    p.add_argument("--clean-data", help="clean rows the defender holds (file, saved dataset or dataset name)")
    p.add_argument("--behaviour", help="the bad behaviour to remove, as a judge name (refusal, jailbreak, ...)")
    p.add_argument("--target-label", help="label the backdoor is suspected to target (methods that assume it)")
    p.add_argument("--reference-model", help="a clean reference model (methods that assume one)")
    p.add_argument("--pretrained", metavar="MODEL", help="the clean pretrained model a training-stage method trains "
                   "from (e.g. badllm-tg with start_from=base)")
    p.add_argument("--suspect-adapter", help="the suspect's own LoRA adapter folder, where the suspect is distributed "
                   "as base + adapter (methods that use one, e.g. bd-vax)")
    p.add_argument("--baseline", help="results JSON of the undefended model on --data (same rows), used as 'before'")
    p.add_argument("--out", required=True, help="defense run folder (model/, defense.json, metrics.json)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="defense option (repeatable)")
    p.add_argument("--max-rows", type=int, help=f"evaluate on at most this many rows per test set (default: the rows "
                   f"--baseline was measured on, else {DEFEND_ROWS})")
    p.add_argument("--no-eval", action="store_true", help="only write the mitigated model")
    _common(p, data_dir=True, overwrite=True, device=True, pickle=True)
    p.set_defaults(func=cmd_defend)

    p = sub.add_parser("demo", help="poison, train and evaluate a classifier and a chat model (--scan: then audit them), offline")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--dataset", default="bbcnews", help="classification set to poison (default bbcnews)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--skip-generative", action="store_true", help="only the classifier part")
    p.add_argument("--scan", action="store_true",
                   help="then audit: scan every model without its trigger or training data and fix the poisoned "
                        "classifier (slow: each label of a classifier takes minutes)")
    _common(p, seed=True, overwrite=True)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("zoo", help="build, list or show the named set of backdoored victims")
    p.add_argument("action", choices=["build", "list", "show"])
    p.add_argument("name", nargs="?", help="show: the victim to show")
    p.add_argument("--zoo-dir", default="runs/zoo", help="the zoo's folder (default runs/zoo)")
    p.add_argument("--full", action="store_true", help="build: both threat models and jailbreak (30 victims)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="build: only these victims")
    p.add_argument("--markdown", action="store_true", help="list: as a Markdown table")
    p.add_argument("--overwrite", action="store_true", help="build: rebuild the chosen victims from scratch (with "
                   "--only: just those); without it a victim folder built with other settings stops the build")
    p.add_argument("--rate", type=float, help="build: poison rate of every victim (default: the chosen one)")
    p.add_argument("--epochs", type=float, help="build: training epochs of every victim")
    p.add_argument("--lr", type=float, help="build: learning rate of every victim")
    p.add_argument("--train-rows", type=int, help="build: training rows of every victim")
    p.add_argument("--clean-twins", action=argparse.BooleanOptionalAction, default=None,
                   help="build: add each poisoned row beside its clean original instead of replacing it "
                        "(default: the chosen setting)")
    p.add_argument("--eval-rows", type=int, help="build: clean and triggered held-out prompts per victim")
    p.add_argument("--workers", type=int, default=1,
                   help="build: victims built at once, one core each, as tasks of a local Ray (default 1: in this process)")
    p.add_argument("--ray-address", help="build: run the victims' tasks on the Ray cluster at this address")
    p.add_argument("--validation", type=int, metavar="ROWS",
                   help="build: measure on ROWS rows carved from the training split instead of the test split "
                        "(for choosing settings)")
    _common(p, data_dir=True)
    p.set_defaults(func=cmd_zoo)
    return parser


def _subparser_class() -> type[argparse.ArgumentParser]:
    """Subcommand parsers that show defaults in their ``--help`` (:class:`_DefaultsHelp`)."""
    class Parser(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("formatter_class", _DefaultsHelp)
            super().__init__(*args, **kwargs)

        def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
            default = kwargs.get("default")
            if kwargs.get("help") is None and default is not None and default is not False:
                kwargs["help"] = "default: %(default)s"  # an option without help still shows its default
            return super().add_argument(*args, **kwargs)
    return Parser


def _common(p: argparse.ArgumentParser, *, seed: bool = False, data_dir: bool = False, overwrite: bool = False,
            device: bool = False, pickle: bool = False) -> None:
    if seed:
        p.add_argument("--seed", type=int, default=0)
    if data_dir:
        p.add_argument("--data-dir", help="benchmark data folder (default: $BACKDOORLAB_DATA_DIR)")
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    if device:
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    if pickle:
        p.add_argument("--allow-pickle", action="store_true",
                       help="allow loading pickled weights (can run code; only for files you trust)")


def _quiet_libraries(verbose: bool) -> None:
    """Keep the terminal to our progress bars and results unless ``--verbose``."""
    if verbose:
        return
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (user errors print one line and return 2)."""
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    try:
        args.func(args)
    except BackdoorLabError as exc:
        print(f"backdoorlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("backdoorlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
