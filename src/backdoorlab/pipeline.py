"""The pipeline's stages as functions over run folders: attack → train → evaluate.

An *attack run* folder is an :class:`~backdoorlab.attacks.run.AttackRun`. A *training run*
folder is written by :func:`backdoorlab.training.train`; evaluation writes ``results.json`` into it.
The CLI calls these functions and nothing else.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from .attacks import get_attack, poison_dataset, triggered_test_set
from .attacks.base import attack_info as get_attack_info
from .attacks.run import AttackRun
from .data.records import Dataset
from .data.registry import load_dataset
from .errors import BackdoorLabError
from .fileio import read_json, write_json_atomic
from .fingerprint import FINGERPRINT_KEY
from .manifest import environment_info

#: Ready-made poisoned sets: the judge their backdoor is measured with.
READY_MADE_BEHAVIOURS = {"refusal": "refusal", "jailbreak": "jailbreak", "negsentiment": "negsentiment",
                         "sst2sentiment": "label-flip"}


def run_attack(dataset: str, attack: str, out: str | Path, *, rate: float, target: int | str | None = None,
               seed: int = 0, clean_label: bool = False, options: dict[str, Any] | None = None,
               train_split: str = "train", test_split: str = "test", max_train: int | None = None,
               max_test: int | None = None, data_dir: str | Path | None = None,
               test_data: str | None = None, overwrite: bool = False) -> Path:
    """Poison ``dataset``'s training split and build its clean and triggered test sets in ``out``.

    Test rows come from ``test_split`` of ``dataset``, or of ``test_data`` (a name or path) if given.
    An ``out`` that already holds this attack run (same settings and rows) is reused; one that holds
    another stops with the differing settings unless ``overwrite``.
    """
    from .fingerprint import dataset_digest

    options = dict(options or {})
    settings = {"dataset": dataset, "attack": attack, "options": dict(options), "rate": rate, "target": target,
                "seed": seed, "clean_label": clean_label, "train_split": train_split, "test_split": test_split,
                "max_train": max_train, "max_test": max_test, "test_data": test_data}
    if data_dir is not None and "data_dir" in get_attack_info(attack).options:
        options.setdefault("data_dir", str(data_dir))  # paraphrase attacks read their pools there too
    attack_obj = get_attack(attack, **options)
    train = load_dataset(dataset, train_split, data_dir=data_dir).sample(max_train, seed)
    test = load_dataset(test_data or dataset, test_split, data_dir=data_dir).sample(max_test, seed)
    fingerprint = _attack_fingerprint(settings, train=dataset_digest(train), test=dataset_digest(test))
    if AttackRun(out).reusable(fingerprint, overwrite):
        return Path(out)
    result = poison_dataset(train, attack_obj, rate=rate, target=target, seed=seed, clean_label=clean_label)
    triggered = triggered_test_set(test, attack_obj, target=target, seed=seed)
    manifest = {
        **result.manifest,
        "task": train.task,
        "behaviour": getattr(attack_obj, "behaviour", None),
        "target_output": getattr(attack_obj, "target_output", None) or None,
        "splits": AttackRun.split_sizes(result.dataset, test, triggered),
        "test_source": {"dataset": test.name, "split": test_split, "max_test": max_test, "notes": test.notes},
        FINGERPRINT_KEY: fingerprint,
    }
    return _write_attack_run(out, result.dataset, test, triggered, manifest, overwrite)


def _attack_fingerprint(settings: dict[str, Any], **rows: str) -> dict[str, Any]:
    """What an attack run depends on: the command's settings, the digests of the rows it read, the attack code."""
    from .fingerprint import make_fingerprint

    return make_fingerprint("attack", code=["backdoorlab.attacks", "backdoorlab.attacks.run"], settings=settings,
                            rows=rows)


def use_ready_made(dataset: str, out: str | Path, *, max_train: int | None = None, max_test: int | None = None,
                   seed: int = 0, rate: float = 0.2, data_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Turn a ready-made poisoned generative set into an attack run.

    ``backdoorllm-<task>-<attack>``: BackdoorLLM's poisoned files as they are. ``bkdattr-<task>``:
    the Backdoor Attribution study's backdoor, with ``rate`` of the training rows poisoned (see
    :func:`backdoorlab.attacks.bkdattr_sets`).
    """
    from .fingerprint import dataset_digest

    settings = {"dataset": dataset, "attack": "ready-made", "max_train": max_train, "max_test": max_test, "seed": seed}
    if dataset.startswith("bkdattr-"):
        fingerprint = _attack_fingerprint({**settings, "rate": rate})
        if AttackRun(out).reusable(fingerprint, overwrite):
            return Path(out)
        return _bkdattr_run(dataset, out, rate=rate, max_train=max_train, max_test=max_test, seed=seed,
                            data_dir=data_dir, overwrite=overwrite, fingerprint=fingerprint)
    parts = dataset.split("-")
    if len(parts) != 3 or parts[0] != "backdoorllm" or parts[1] not in READY_MADE_BEHAVIOURS:
        raise BackdoorLabError(
            f"{dataset!r} is not a ready-made poisoned set; use backdoorllm-<task>-<attack> "
            f"with task in {', '.join(READY_MADE_BEHAVIOURS)}"
        )
    behaviour = READY_MADE_BEHAVIOURS[parts[1]]
    train = load_dataset(dataset, "train", data_dir=data_dir).sample(max_train, seed)
    clean = load_dataset(dataset, "test-clean", data_dir=data_dir).sample(max_test, seed)
    triggered = load_dataset(dataset, "test-poison", data_dir=data_dir).sample(max_test, seed)
    fingerprint = _attack_fingerprint(settings, train=dataset_digest(train), clean=dataset_digest(clean),
                                      triggered=dataset_digest(triggered))
    if AttackRun(out).reusable(fingerprint, overwrite):
        return Path(out)
    manifest = {
        "source_dataset": {"name": dataset, "notes": train.notes}, "attack": {"name": parts[2], "ready_made": True},
        "task": "generation", "behaviour": behaviour,
        "target_output": "Negative" if behaviour == "label-flip" else None,
        "rate": sum(e.poisoned for e in train) / max(len(train), 1), "seed": seed,
        "splits": AttackRun.split_sizes(train, clean, triggered),
        "environment": environment_info(), FINGERPRINT_KEY: fingerprint,
    }
    if behaviour == "label-flip":
        manifest["notes"] = ["BackdoorLLM's sst2sentiment test-poison file triggers every test sentence, including "
                             "ones already negative, so ASR here over-states the flip rate; attack clean rows "
                             "with --attack badnet --option behaviour=label-flip for an exact ASR"]
    return _write_attack_run(out, train, clean, triggered, manifest, overwrite)


def run_paired_attack(dataset: str, attack: str, out: str | Path, *, rate: float, seed: int = 0,
                      options: dict[str, Any] | None = None, max_train: int | None = None, max_test: int | None = None,
                      validation: int = 0, data_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """``attack``'s trigger on a set that pairs each request with its own backdoor answer
    (``bkdattr-harmful_random``: a refusal and a compliant answer each): the poisoned rows take their
    own compliant answer (:func:`backdoorlab.attacks.bkdattr_sets` with ``attack``; behaviour
    ``jailbreak``). ``validation`` > 0 measures on rows carved from the training rows."""
    options = dict(options or {})
    settings = {"dataset": dataset, "attack": attack, "options": options, "rate": rate, "seed": seed,
                "max_train": max_train, "max_test": max_test, "validation": validation, "paired": True}
    fingerprint = _attack_fingerprint(settings)
    if AttackRun(out).reusable(fingerprint, overwrite):
        return Path(out)
    return _bkdattr_run(dataset, out, rate=rate, max_train=max_train, max_test=max_test, seed=seed, data_dir=data_dir,
                        overwrite=overwrite, fingerprint=fingerprint, attack=get_attack(attack, **options),
                        validation=validation)


def _bkdattr_run(dataset: str, out: str | Path, *, rate: float, max_train: int | None, max_test: int | None,
                 seed: int, data_dir: str | Path | None, overwrite: bool, fingerprint: dict[str, Any],
                 attack: Any = None, validation: int = 0) -> Path:
    from .attacks import bkdattr_sets

    train, clean, triggered, fields = bkdattr_sets(dataset, rate=rate, max_train=max_train, max_test=max_test,
                                                   seed=seed, data_dir=data_dir, attack=attack, validation=validation)
    manifest = {
        "source_dataset": {"name": dataset, "notes": train.notes}, **fields, "task": "generation", "seed": seed,
        "splits": AttackRun.split_sizes(train, clean, triggered),
        "environment": environment_info(), FINGERPRINT_KEY: fingerprint,
    }
    return _write_attack_run(out, train, clean, triggered, manifest, overwrite)


def _write_attack_run(out: str | Path, train: Dataset, clean: Dataset, triggered: Dataset,
                      manifest: dict[str, Any], overwrite: bool) -> Path:
    return AttackRun.write(out, train, clean, triggered, manifest, overwrite=overwrite).folder


def read_attack_run(folder: str | Path) -> tuple[dict[str, Any], Dataset, Dataset]:
    """Return ``(manifest, clean test, triggered test)`` of an attack run folder."""
    return AttackRun(folder).read()


def load_training_data(data: str | Path, split: str = "train", data_dir: str | Path | None = None) -> Dataset:
    """Training rows from an attack run folder, a saved dataset folder, a data file or a registered name."""
    run = AttackRun(data)
    if run.exists():
        return run.train()
    return load_dataset(str(data), split, data_dir=data_dir)


def evaluation_rows(attack_run: str | Path, max_rows: int | None = None,
                    seed: int = 0) -> tuple[dict[str, Any], Dataset, Dataset]:
    """``(manifest, clean, triggered)``: the rows an evaluation with ``max_rows`` and ``seed`` reads."""
    manifest, clean, triggered = read_attack_run(attack_run)
    clean = clean.sample(max_rows, seed)
    return manifest, clean, aligned_sample(triggered, clean, max_rows, seed)


def aligned_sample(triggered: Dataset, clean: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """``n`` triggered rows, those whose clean original (same ``uid``) is among ``clean`` first, so
    the ASR floor can be read off the same rows without their trigger; the rest drawn with ``seed``."""
    if n is None or n >= len(triggered):
        return triggered
    kept = {e.uid for e in clean if e.uid}
    paired = [e for e in triggered if e.uid in kept][:n]
    others = [e for e in triggered if e.uid not in kept]
    rest = random.Random(seed).sample(others, min(n - len(paired), len(others)))
    return triggered.with_examples([*paired, *rest], note=f"subsampled to {n} rows with seed {seed}, "
                                   "the clean test rows' triggered copies first")


def row_ids(rows: Dataset) -> list[str]:
    """Each row's ``uid``, or a hash of its content when it has none."""
    from .fingerprint import digest

    return [e.uid or "sha256:" + digest(e.to_dict())[:16] for e in rows]


def evaluation_fingerprint(model: str | Path, manifest: dict[str, Any], clean: Dataset, triggered: Dataset, *,
                           max_new_tokens: int, guard: str | Path | None,
                           floor_model: str | Path | None = None, utility_rows: int | None = None) -> dict[str, Any]:
    """What an evaluation's result depends on: the model, the evaluated rows, how they are judged."""
    from .fingerprint import dataset_digest, file_digest, make_fingerprint, model_identity

    guard_id = None
    if guard is not None:
        guard_file = Path(guard) / "guard.json" if Path(guard).is_dir() else Path(guard)
        guard_id = file_digest(guard_file) if guard_file.is_file() else str(guard)
    measured = {key: manifest.get(key) for key in ("task", "target", "behaviour", "target_output")}
    return make_fingerprint("evaluate", code=["backdoorlab.evaluation", __name__], model=model_identity(model), measured=measured,
                            clean=dataset_digest(clean), triggered=dataset_digest(triggered),
                            max_new_tokens=max_new_tokens if manifest.get("task") != "classification" else None,
                            guard=guard_id, floor_model=None if floor_model is None else model_identity(floor_model),
                            utility_rows=utility_rows)


def run_evaluate(model: str | Path, attack_run: str | Path, *, max_rows: int | None = None, batch_size: int = 16,
                 max_new_tokens: int = 48, device: str = "auto", out: str | Path | None = None,
                 allow_pickle: bool = False, seed: int = 0, guard: str | Path | None = None,
                 floor_model: str | Path | None = None, utility_rows: int | None = None) -> dict[str, Any]:
    """Evaluate a model on an attack run's test sets and write the results as JSON.

    The results record the evaluated rows' ids and a fingerprint (see :func:`ensure_evaluated`).
    ``out`` defaults to ``results.json`` of the run folder that holds the model (``RUN/model`` →
    ``RUN/results.json``) and otherwise to ``evaluations/<model>--<attack run>.json`` in the current
    folder: a model folder that is not a backdoorlab run is the user's and is never written to.
    ``guard``: a defense run folder (or ``guard.json``) of an inference-time defense to predict
    (classifiers) or decode (generators) through. ``floor_model``: a model trained on the clean rows alone; its ASR on
    the same triggered rows is reported as ``asr_floor_clean_model`` (classifiers). ``utility_rows``:
    also score that many questions (seed ``seed``) of each multiple-choice utility set and report
    them under ``utility`` (generators; :func:`backdoorlab.metrics.utility.evaluate_utility`).
    """
    from .evaluation import evaluate_classifier, evaluate_generator
    from .models.loading import load_victim

    manifest, clean, triggered = evaluation_rows(attack_run, max_rows, seed)
    fingerprint = evaluation_fingerprint(model, manifest, clean, triggered, max_new_tokens=max_new_tokens, guard=guard,
                                         floor_model=floor_model, utility_rows=utility_rows)
    if floor_model is not None and manifest["task"] != "classification":
        raise BackdoorLabError("--floor-model applies to classifiers; a generator's floor is its clean-prompt rate")
    if utility_rows is not None and manifest["task"] == "classification":
        raise BackdoorLabError("--utility-rows scores generators on multiple-choice sets; a classifier's utility is CACC")
    victim = load_victim(model, label_names=clean.label_names, device=device, allow_pickle=allow_pickle)
    victim.check_compatible(clean)
    loaded = None
    if guard is not None:
        from .defenses.guard import load_guard

        loaded = load_guard(guard)
    if manifest["task"] == "classification":
        predict = None
        if loaded is not None:
            predict = lambda items, size: loaded.predict(victim, items, size)  # noqa: E731
        floor_predict = None
        if floor_model is not None:
            reference = load_victim(floor_model, label_names=clean.label_names, device=device, allow_pickle=allow_pickle)
            reference.check_compatible(clean)
            floor_predict = reference.predict
        metrics = evaluate_classifier(victim, clean, triggered, manifest["target"]["index"], batch_size=batch_size,
                                      predict=predict, floor_predict=floor_predict)
        if guard is not None:
            metrics["guard"] = str(guard)
    else:
        generate = None
        if loaded is not None:
            generate = lambda items, tokens, size: loaded.generate(victim, items, tokens, size)  # noqa: E731
        metrics = evaluate_generator(victim, triggered, clean, manifest["behaviour"],
                                     target_output=manifest.get("target_output"),
                                     max_new_tokens=max_new_tokens, batch_size=batch_size, generate=generate)
        if loaded is not None:
            metrics.update(guard=str(guard), guard_stats=loaded.stats())
        if utility_rows is not None:
            from .metrics.utility import evaluate_utility

            metrics["utility"] = evaluate_utility(victim, max_rows=utility_rows, seed=seed)
            metrics["task_accuracy"] = metrics["utility"]["average"]["acc"]
    results = {"model": str(model), "attack_run": str(attack_run), "metrics": metrics,
               "rows": {"clean": row_ids(clean), "triggered": row_ids(triggered), "max_rows": max_rows, "seed": seed},
               "fingerprint": fingerprint, "environment": environment_info()}
    destination = Path(out) if out else default_results_path(model, attack_run)
    write_json_atomic(destination, results)
    results["written_to"] = str(destination)
    return results


RUN_RECORDS = ("train.json", "defense.json", "inject.json")


def default_results_path(model: str | Path, attack_run: str | Path, guard: str | Path | None = None) -> Path:
    """Where ``evaluate`` writes by default: beside a backdoorlab run's ``model/``, never inside a
    user's model folder; an evaluation through ``guard`` gets its own file (``results--guard-<name>.json``),
    so it never replaces the unguarded one a defense is compared with."""
    suffix = ""
    if guard is not None:
        guard_path = Path(guard)
        suffix = f"--guard-{guard_path.parent.name if guard_path.suffix == '.json' else guard_path.name}"
    path = Path(model)
    if path.is_dir() and path.name == "model" and any((path.parent / name).is_file() for name in RUN_RECORDS):
        return path.parent / f"results{suffix}.json"
    label = path.name if path.is_dir() else str(model).replace("/", "_")
    return Path("evaluations") / f"{label}--{Path(attack_run).name}{suffix}.json"


def evaluate_once(model: str | Path, attack_run: str | Path, *, out: str | Path | None = None, overwrite: bool = False,
                  max_rows: int | None = None, seed: int = 0, max_new_tokens: int = 48,
                  guard: str | Path | None = None, floor_model: str | Path | None = None,
                  utility_rows: int | None = None, **options: Any) -> dict[str, Any]:
    """``backdoorlab evaluate``: :func:`run_evaluate` into ``out`` (default :func:`default_results_path`),
    unless ``out`` already holds this very evaluation (same fingerprint), which is returned with
    ``reused``; a file holding another evaluation stops with the differing settings unless ``overwrite``."""
    from .reuse import check_reusable

    destination = Path(out) if out else default_results_path(model, attack_run, guard)
    settings = {"max_rows": max_rows, "seed": seed, "max_new_tokens": max_new_tokens, "guard": guard,
                "floor_model": floor_model, "utility_rows": utility_rows}
    if destination.exists() and not overwrite:
        manifest, clean, triggered = evaluation_rows(attack_run, max_rows, seed)
        expected = evaluation_fingerprint(model, manifest, clean, triggered, max_new_tokens=max_new_tokens, guard=guard,
                                          floor_model=floor_model, utility_rows=utility_rows)
        kept = read_json(destination) or {}
        check_reusable(destination, kept.get(FINGERPRINT_KEY), expected, "an evaluation",
                       "pass --overwrite to replace it, or --out another file")
        return {**kept, "written_to": str(destination), "reused": True}
    return run_evaluate(model, attack_run, out=destination, **settings, **options)


def ensure_trained(run: str | Path, model: str | Path, data: Dataset, config: Any) -> Path:
    """``run/model``: ``model`` trained on ``data`` with ``config``, trained now (resuming a partial run)
    unless ``run`` already holds exactly that training; raises if its model was trained otherwise."""
    from .training import MODEL_DIR, train, trained_model

    run = Path(run)
    if trained_model(run, model, data, config) is None:
        train(model, data, run, config)
    return run / MODEL_DIR


def ensure_trained_shared(store: str | Path, model: str | Path, data: Dataset, config: Any,
                          kind: str = "classifier") -> Path:
    """:func:`ensure_trained` in the folder of ``store`` named by the training's fingerprint (model, rows,
    settings, training code), so that whoever asks for the same training gets one model: two benchmarks'
    cells for one drawn victim, or a cell run again after an edit to the code that uses its model. A
    process that finds the folder locked waits for the model instead of training it beside the other."""
    import fcntl

    from .fingerprint import digest, model_identity
    from .training import train_fingerprint

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    key = digest(train_fingerprint(model_identity(model), kind, data, config))[:20]
    with open(store / f"{key}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return ensure_trained(store / key, model, data, config)


def ensure_evaluation(model: str | Path, attack_run: str | Path, out: str | Path, *, max_rows: int | None = None,
                      seed: int = 0, max_new_tokens: int = 48, guard: str | Path | None = None,
                      **options: Any) -> dict[str, Any]:
    """The results of evaluating ``model`` on ``attack_run``, kept in ``out`` (a JSON file).

    A kept result is reused only when its fingerprint (model identity, evaluated rows, judge
    settings, guard, evaluation code) equals this call's; otherwise the model is evaluated again.
    """
    from .fingerprint import read_if_current

    manifest, clean, triggered = evaluation_rows(attack_run, max_rows, seed)
    expected = evaluation_fingerprint(model, manifest, clean, triggered, max_new_tokens=max_new_tokens, guard=guard)
    cached = read_if_current(out, expected)
    if cached is not None:
        return {**cached, "written_to": str(out)}
    return run_evaluate(model, attack_run, out=out, max_rows=max_rows, seed=seed, max_new_tokens=max_new_tokens,
                        guard=guard, **options)


def ensure_evaluated(model: str | Path, attack_run: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """The metrics of :func:`ensure_evaluation`."""
    return ensure_evaluation(model, attack_run, out, **options)["metrics"]
