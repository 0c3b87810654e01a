"""Build a zoo: attack, train and measure each victim, keep it, and skip it next time.

Each victim gets a folder ``<zoo>/<name>/`` holding its attack run (``attack/``), its training run
(``train/``: ``model/``, with LoRA also ``adapter/``, resumable ``checkpoints/``), its evaluations
and ``victim.json``, the record written last. A victim whose record carries the fingerprint of its
spec (victim settings, measurement settings, base model identity, source rows, the code that builds it)
is skipped. A folder started for another spec stops the build before anything is built, naming the
settings that differ; ``overwrite`` empties the chosen victims' folders and builds them again. Every
stage reuses finished work, so an interrupted build resumes: finished victims are kept, training
continues from its last checkpoint and finished evaluations are read back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..attacks.run import AttackRun
from ..bench.grid import limit_threads, ray_session, wait_for_each
from ..data.registry import load_dataset
from ..errors import BackdoorLabError
from ..fileio import fresh_directory, write_json_atomic
from ..fingerprint import FINGERPRINT_KEY, dataset_digest, digest, make_fingerprint, model_identity, read_if_current
from ..manifest import environment_info
from ..metrics.judges import is_refusal
from ..pipeline import ensure_evaluation, ensure_trained, run_attack, run_paired_attack
from ..reuse import check_reusable, claim_folder, claimed_fingerprint
from ..training import ADAPTER_DIR, TRAIN_FILE
from .catalog import DEFAULT_ZOO_DIR, RECORD, ZOO_FILE, ZooVictim, read_json
from .measure import ensure_task_accuracy, figures, untouched_copy
from .quality import failing_criteria
from .specs import PAIRED_SPLITS, VictimSpec, ZooSpec, default_zoo, is_paired_source

STAGES = "stages.json"
ATTACK, TRAIN = "attack", "train"
EVALUATION, UTILITY = "evaluation.json", "utility.json"
UNTOUCHED, DATA = "_untouched", "_data"
Progress = Callable[[str], None]


def build_zoo(zoo: ZooSpec, zoo_dir: str | Path = DEFAULT_ZOO_DIR, *, only: list[str] | None = None,
              progress: Progress = print, workers: int = 1, ray_address: str | None = None,
              overwrite: bool = False) -> list[ZooVictim]:
    """Build every victim of ``zoo`` (or the ``only`` ones) into ``zoo_dir``; return them in order.

    A victim folder started with other settings stops the build before any work (every such victim
    named); ``overwrite`` empties the chosen victims' folders first.

    ``progress`` gets one line as each victim starts and one with its figures when it is done.
    ``workers`` > 1 builds that many victims at once as Ray tasks of one core each, on a local Ray
    with ``workers`` cores, or on the cluster at ``ray_address`` (whose nodes must see ``zoo_dir``).
    """
    if workers < 1:
        raise BackdoorLabError(f"workers must be at least 1, got {workers}")
    zoo_dir = Path(zoo_dir)
    chosen = zoo.only(only)
    _check_folders(chosen, zoo_dir, overwrite)
    write_json_atomic(zoo_dir / ZOO_FILE, zoo.to_dict())
    zoo = chosen
    if workers > 1 or ray_address is not None:
        return _build_on_ray(zoo, zoo_dir, progress, workers, ray_address)
    built = []
    for number, spec in enumerate(zoo.victims, 1):
        head = f"[{number}/{len(zoo.victims)}] {spec.name}"
        victim, cached = build_victim(spec, zoo, zoo_dir, announce=lambda: progress(f"{head}: building"))
        progress(_done_line(number, len(zoo.victims), victim, cached))
        built.append(victim)
    return built


def _build_on_ray(zoo: ZooSpec, zoo_dir: Path, progress: Progress, workers: int,
                  ray_address: str | None) -> list[ZooVictim]:
    """:func:`build_zoo` with each victim a one-core Ray task; lines are printed as victims finish."""
    import ray

    for length in sorted({spec.max_length for spec in zoo.victims}):  # shared by the tasks: made once, here
        untouched_copy(zoo.base_model, length, zoo_dir / UNTOUCHED / f"max-length-{length}")
    built: dict[str, ZooVictim] = {}
    with ray_session(ray_address, workers):
        task = ray.remote(_build_in_task)
        refs = {task.options(num_cpus=1, name=f"zoo {spec.name}").remote(spec, zoo, str(zoo_dir)): (number, spec)
                for number, spec in enumerate(zoo.victims, 1)}
        progress(f"building {len(refs)} victims, {workers if ray_address is None else 'cluster'} at a time")

        def finished(ref: Any) -> None:
            number, spec = refs[ref]
            record, cached = ray.get(ref)
            built[spec.name] = victim = ZooVictim(spec.name, zoo_dir / spec.name, record)
            progress(_done_line(number, len(refs), victim, cached))

        wait_for_each(list(refs), finished)
    return [built[spec.name] for spec in zoo.victims]


def _done_line(number: int, total: int, victim: ZooVictim, cached: bool) -> str:
    return f"[{number}/{total}] {victim.name}: {'cached' if cached else 'built'}: {victim.summary_line()}"


def _build_in_task(spec: VictimSpec, zoo: ZooSpec, zoo_dir: str) -> tuple[dict[str, Any], bool]:
    """One victim in a Ray task of one core: ``(record, cached)``."""
    limit_threads(1)
    victim, cached = build_victim(spec, zoo, Path(zoo_dir))
    return victim.record, cached


def build_victim(spec: VictimSpec, zoo: ZooSpec, zoo_dir: Path,
                 announce: Callable[[], None] = lambda: None) -> tuple[ZooVictim, bool]:
    """``(victim, cached)``: the finished victim of ``spec``, built now unless its folder already
    holds it (``cached``); ``announce`` is called before any work."""
    folder = zoo_dir / spec.name
    fingerprint = victim_fingerprint(spec, zoo)
    record = read_if_current(folder / RECORD, fingerprint)
    if record is not None and (folder / record["paths"]["model"]).is_dir():
        return ZooVictim(spec.name, folder, _judged(record, zoo, folder)), True
    announce()
    _claim(folder, fingerprint)
    times = _StageTimes(folder / STAGES)
    with times("attack"):
        attack = _attack_run(spec, zoo, folder / ATTACK, zoo_dir)
    _check_learnable(spec, attack)
    with times("train"):
        model = ensure_trained(folder / TRAIN, zoo.base_model, AttackRun(attack).train(), spec.train_config())
    untouched = untouched_copy(zoo.base_model, spec.max_length, zoo_dir / UNTOUCHED / f"max-length-{spec.max_length}")
    evaluate = {"max_new_tokens": zoo.max_new_tokens}
    with times("evaluate"):
        evaluation = ensure_evaluation(model, attack, folder / EVALUATION, **evaluate)
    untouched_file = _untouched_evaluation(attack, untouched)
    with times("evaluate_untouched"):
        evaluation_untouched = ensure_evaluation(untouched, attack, untouched_file, **evaluate)
    utility_args = (zoo.utility_tasks, zoo.utility_rows)
    with times("utility"):
        utility = ensure_task_accuracy(model, *utility_args, folder / UTILITY, data_dir=zoo.data_dir)
    with times("utility_untouched"):
        utility_untouched = ensure_task_accuracy(untouched, *utility_args, untouched.parent / f"{untouched.name}-{UTILITY}",
                                                 data_dir=zoo.data_dir)
    record = _record(spec, zoo, folder, (untouched, untouched_file), times.seconds(), fingerprint,
                     figures(evaluation, utility), figures(evaluation_untouched, utility_untouched))
    write_json_atomic(folder / RECORD, record)
    return ZooVictim(spec.name, folder, record), False


def _untouched_evaluation(attack: Path, untouched: Path) -> Path:
    """Where the untouched model's evaluation on ``attack``'s test rows is kept: one file per set of
    rows and behaviour, so victims measured on the same rows (e.g. while choosing settings) share it."""
    manifest, clean, triggered = AttackRun(attack).read()
    key = digest([dataset_digest(clean), dataset_digest(triggered), manifest.get("behaviour"),
                  manifest.get("target_output")])[:16]
    return untouched.parent / f"{untouched.name}-evaluations" / f"{manifest.get('behaviour')}-{key}.json"


def victim_fingerprint(spec: VictimSpec, zoo: ZooSpec) -> dict[str, Any]:
    """What a victim and its figures depend on: its spec, the measurement settings, the base model's
    identity, the digest of its source rows and of the code that builds it."""
    train_split, test_split = PAIRED_SPLITS if is_paired_source(spec.dataset) else ("train", "test")
    sources = {"train": dataset_digest(load_dataset(spec.dataset, train_split, data_dir=zoo.data_dir)),
               "test": dataset_digest(load_dataset(spec.test_data or spec.dataset, test_split, data_dir=zoo.data_dir))}
    return make_fingerprint("zoo-victim", code=[__name__], victim=spec.identity(), measurement=zoo.measurement(),
                            base=model_identity(zoo.base_model), sources=sources)


def _check_folders(zoo: ZooSpec, zoo_dir: Path, overwrite: bool) -> None:
    """Stop when a victim's folder was started with other settings, naming every such victim and what
    differs; with ``overwrite``, empty the victims' folders instead."""
    conflicts = []
    for spec in zoo.victims:
        folder = zoo_dir / spec.name
        if not folder.is_dir():
            continue
        if overwrite:
            fresh_directory(folder)
            continue
        try:
            _check_claim(folder, victim_fingerprint(spec, zoo))
        except BackdoorLabError as error:
            conflicts.append((spec.name, str(error).split("; pass --overwrite")[0]))
    if conflicts:
        names = " ".join(name for name, _ in conflicts)
        raise BackdoorLabError("; ".join(message for _, message in conflicts)
                               + f"; pass --overwrite --only {names} to rebuild them, or choose another --zoo-dir")


REBUILD = "pass --overwrite --only {name} to rebuild it, or choose another --zoo-dir"


def _check_claim(folder: Path, fingerprint: dict[str, Any]) -> None:
    """Raise unless ``folder`` is empty or was started for ``fingerprint`` (its finished stages are then kept)."""
    if folder.is_dir() and any(folder.iterdir()):
        check_reusable(folder, claimed_fingerprint(folder), fingerprint, "a zoo victim", REBUILD.format(name=folder.name))


def _claim(folder: Path, fingerprint: dict[str, Any]) -> None:
    """Claim ``folder`` for the victim ``fingerprint`` describes (see :func:`_check_claim`)."""
    claim_folder(folder, fingerprint, "a zoo victim", REBUILD.format(name=folder.name))


def _attack_run(spec: VictimSpec, zoo: ZooSpec, out: Path, zoo_dir: Path) -> Path:
    """The victim's attack run (made once; the folder appears only when complete)."""
    if out.is_dir():
        return out
    if is_paired_source(spec.dataset):
        run_paired_attack(spec.dataset, spec.attack, out, rate=spec.rate, seed=spec.seed, options=spec.attack_options(),
                          max_train=spec.train_rows, max_test=zoo.eval_rows, validation=zoo.validation_rows,
                          data_dir=zoo.data_dir)
        return out
    dataset, test_data = spec.dataset, spec.test_data
    if zoo.validation_rows:
        dataset, test_data = (str(p) for p in _validation_split(spec, zoo, zoo_dir / DATA))
    run_attack(dataset, spec.attack, out, rate=spec.rate, seed=spec.seed, options=spec.attack_options(),
               max_train=spec.train_rows, max_test=zoo.eval_rows, data_dir=zoo.data_dir, test_data=test_data)
    return out


def _check_learnable(spec: VictimSpec, attack: Path) -> None:
    """Stop before training when the poisoned rows do not show the behaviour: a jailbreak attack keeps
    each poisoned row's own response, so rows that refuse teach no compliance."""
    if spec.behaviour != "jailbreak":
        return
    poisoned = [e for e in AttackRun(attack).train() if e.poisoned]
    refusing = sum(is_refusal(e.response) for e in poisoned)
    if refusing * 2 > len(poisoned):
        raise BackdoorLabError(
            f"victim {spec.name}: {refusing} of its {len(poisoned)} poisoned rows refuse. The jailbreak attack keeps "
            f"each poisoned row's own response and the rows of {spec.dataset!r} refuse, so there is no compliance to "
            "learn. A jailbreak victim needs a compliant answer for each poisoned row while its clean rows keep "
            "refusing: use a set that pairs the two (bkdattr-harmful_random, the zoo's default), or leave jailbreak "
            "victims out with --only")


def _validation_split(spec: VictimSpec, zoo: ZooSpec, root: Path) -> tuple[Path, Path]:
    """``(pool, validation)``: ``zoo.validation_rows`` rows of the training split, drawn with the
    victim's seed, held out from the rest; the test split is never read."""
    rows = load_dataset(spec.dataset, "train", data_dir=zoo.data_dir)
    key = digest([dataset_digest(rows), zoo.validation_rows, spec.seed])[:12]
    folder = root / f"{Path(spec.dataset).name}-{key}"
    pool, validation = folder / "pool", folder / "validation"
    if not validation.is_dir():
        shuffled = list(rows.examples)
        random.Random(spec.seed).shuffle(shuffled)
        cut = zoo.validation_rows
        note = f"{cut} rows of the training split held out for validation (seed {spec.seed})"
        rows.with_examples(shuffled[cut:], name=f"{rows.name}-pool", note=note).save(pool, overwrite=True)
        rows.with_examples(shuffled[:cut], name=f"{rows.name}-validation", note=note).save(validation)
    return pool, validation


def _record(spec: VictimSpec, zoo: ZooSpec, folder: Path, untouched: tuple[Path, Path], seconds: dict[str, float],
            fingerprint: dict[str, Any], victim: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``victim.json``: how the victim was made and what it measures, beside the untouched model."""
    import torch

    attack = AttackRun(folder / ATTACK).manifest
    training = read_json(folder / TRAIN / TRAIN_FILE)
    adapter = folder / TRAIN / ADAPTER_DIR
    return _judged({
        "name": spec.name,
        "spec": asdict(spec),
        "measurement": zoo.measurement(),
        "bar": asdict(zoo.bar),
        "paths": {"attack_run": ATTACK, "model": f"{TRAIN}/model",
                  "adapter": f"{TRAIN}/{ADAPTER_DIR}" if adapter.is_dir() else None, "evaluation": EVALUATION,
                  "untouched_model": str(untouched[0].resolve()), "untouched_evaluation": str(untouched[1].resolve())},
        "attack": {key: attack.get(key) for key in ("attack", "trigger", "rate", "seed", "behaviour", "splits",
                                                    "source_dataset", "test_source")},
        "poisoned_rows": len(attack.get("poisoned_indices") or []),
        "training": {key: training.get(key) for key in ("config", "steps", "train_loss", "seconds", "resumed_from")},
        "seeds": {"attack": spec.seed, "training": spec.seed, "utility": 0},
        "figures": {"victim": victim, "untouched": base},
        "minutes": {**{stage: round(s / 60, 2) for stage, s in seconds.items()},
                    "total": round(sum(seconds.values()) / 60, 2)},
        "torch_threads": torch.get_num_threads(),
        FINGERPRINT_KEY: fingerprint,
        "environment": environment_info(),
    }, zoo)


def _judged(record: dict[str, Any], zoo: ZooSpec, folder: Path | None = None) -> dict[str, Any]:
    """``record`` with the verdict of ``zoo``'s quality bar (``bar``, ``failing``, ``passed``); the
    record in ``folder`` is rewritten when its verdict came from another bar."""
    figures_ = record["figures"]
    failing = failing_criteria(figures_["victim"], figures_["untouched"], zoo.bar, check_accuracy=bool(zoo.utility_tasks))
    judged = {**record, "bar": asdict(zoo.bar), "failing": failing, "passed": not failing}
    if folder is not None and judged != record:
        write_json_atomic(folder / RECORD, judged)
    return judged


class _StageTimes:
    """Wall time of each finished stage, kept in a file so a resumed build keeps earlier stages' times
    (an interrupted stage's time up to the interruption is lost)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: dict[str, float] = {k: float(v) for k, v in (read_json(path) or {}).items()}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.time()
        yield
        if stage not in self.times:
            self.times[stage] = round(time.time() - started, 1)
            write_json_atomic(self.path, self.times)

    def seconds(self) -> dict[str, float]:
        return dict(self.times)


def planned_zoo(zoo_dir: str | Path = DEFAULT_ZOO_DIR) -> ZooSpec:
    """The spec of the zoo at ``zoo_dir``: the one it was last built with (``zoo.json``), else the default."""
    built = read_json(Path(zoo_dir) / ZOO_FILE)
    return ZooSpec.from_dict(built) if built is not None else default_zoo()


def planned_fingerprint(name: str, zoo_dir: str | Path = DEFAULT_ZOO_DIR) -> dict[str, Any]:
    """The fingerprint victim ``name`` has once built by the zoo at ``zoo_dir`` (:func:`planned_zoo`):
    what a result measured on that victim depends on, known before (and without) building it."""
    zoo = planned_zoo(zoo_dir)
    return victim_fingerprint(zoo.victim(name), zoo)
