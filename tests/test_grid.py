"""The benchmark grid: cells, the per-cell store, resuming, errors, report-only, Ray, the report and options."""

from __future__ import annotations

import argparse
import base64
import json
import os
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from backdoorlab.bench import (
    Cell,
    CellStore,
    Resources,
    TableSpec,
    add_grid_arguments,
    cell_table,
    grid_kwargs,
    mean_std,
    pivot_table,
    run_grid,
    write_report,
)
from backdoorlab.bench.store import NOT_RUN, OK, STALE
from backdoorlab.errors import BackdoorLabError

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------ toy cell functions
# Module-level, so Ray workers import them from this module.
def toy_cell(cell: Cell, workdir: Path) -> dict:
    """Counts its calls in the cell's work folder; fails with a user error when params ask for it; with
    ``run_options["interrupt_on_call"] = n`` the grid's n-th call is killed (as by Ctrl-C) before it does anything."""
    stop = cell.run_options.get("interrupt_on_call")
    if stop is not None:
        log = workdir.parents[1] / "grid-calls"
        count = len(log.read_text().splitlines()) + 1 if log.is_file() else 1
        log.write_text("call\n" * count)
        if count == stop:
            raise KeyboardInterrupt
    with (workdir / "calls").open("a") as handle:
        handle.write("call\n")
    if cell.params.get("fail"):
        raise BackdoorLabError(f"toy failure in {cell.victim}")
    return {"score": 10 * cell.seed + cell.params.get("bonus", 0), "pid": os.getpid()}


def torch_threads_cell(cell: Cell, workdir: Path) -> dict:
    import torch

    return {"threads": torch.get_num_threads(), "pid": os.getpid()}


def buggy_cell(cell: Cell, workdir: Path) -> dict:
    raise ValueError("a bug, not a user error")


def calls(out: Path, cell: Cell) -> int:
    path = CellStore(out, toy_cell).workdir(cell) / "calls"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def grid_cells(**params: dict) -> list[Cell]:
    """2 victims × 1 defense × 2 seeds; ``params`` maps a victim to its params."""
    return [Cell(victim, "onion", seed, params.get(victim, {})) for victim in ("sst2-badnets", "sst2-addsent")
            for seed in (0, 1)]


def stored(out: Path, cell: Cell) -> dict:
    return json.loads(CellStore(out, toy_cell).path(cell).read_text())


# --------------------------------------------------------------------------------- cells
def test_cell_id_is_stable_safe_and_ignores_params() -> None:
    cell = Cell("sst2/badnets 20%", "badllm-tg", 3, {"rate": 0.2, "lr": 1e-4})
    assert cell.id == "sst2_badnets_20___badllm-tg__seed3"
    assert Cell("sst2/badnets 20%", "badllm-tg", 3, {"lr": 1e-4, "rate": 0.9}).id == cell.id
    assert Cell("sst2/badnets 20%", "badllm-tg", 4).id != cell.id
    assert hash(cell) == hash(Cell("sst2/badnets 20%", "badllm-tg", 3, {"rate": 0.5}))
    with pytest.raises(FrozenInstanceError):
        cell.seed = 1  # type: ignore[misc]


def test_cell_keeps_its_own_copy_of_params_and_rejects_bad_values() -> None:
    params = {"rate": 0.2}
    cell = Cell("v", "d", 0, params)
    params["rate"] = 0.9
    assert cell.params == {"rate": 0.2}
    with pytest.raises(BackdoorLabError, match="JSON"):
        Cell("v", "d", 0, {"path": object()})
    with pytest.raises(BackdoorLabError, match="seed"):
        Cell("v", "d", "0")  # type: ignore[arg-type]
    with pytest.raises(BackdoorLabError, match="victim"):
        Cell("", "d")


def test_duplicate_ids_and_unknown_kinds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="share the id"):
        run_grid([Cell("a/b", "d"), Cell("a_b", "d")], toy_cell, tmp_path, serial=True, progress=False)
    with pytest.raises(BackdoorLabError, match="gpu"):
        run_grid([Cell("a", "d", kind="gpu")], toy_cell, tmp_path, serial=True, progress=False)
    assert not (tmp_path / "cells").exists()


# ------------------------------------------------------------------------- serial grid
def test_grid_stores_every_cell_and_a_rerun_skips_them(tmp_path: Path) -> None:
    cells = grid_cells(**{"sst2-addsent": {"bonus": 5}})
    result = run_grid(cells, toy_cell, tmp_path, serial=True, progress=False)
    assert (result.computed, result.skipped) == (4, 0)
    assert [r["id"] for r in result.records] == [c.id for c in cells]
    for cell in cells:
        record = stored(tmp_path, cell)
        assert record["status"] == OK and record["error"] is None
        assert record["params"] == cell.params and record["seed"] == cell.seed
        assert record["result"]["score"] == 10 * cell.seed + cell.params.get("bonus", 0)
        assert record["seconds"] >= 0 and record["function"].endswith(":toy_cell")
        assert len(record["fingerprint"]["code"]) == 64 and record["cpus"] == os.cpu_count()
        assert record["minutes"] == round(record["seconds"] / 60, 2)
        assert record["fingerprint"]["params"] == cell.params
        assert calls(tmp_path, cell) == 1
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == sorted(f"{c.id}.json" for c in cells)

    again = run_grid(cells, toy_cell, tmp_path, serial=True, progress=False)
    assert (again.computed, again.skipped) == (0, 4)
    assert [calls(tmp_path, c) for c in cells] == [1, 1, 1, 1]
    assert again.records == result.records


def test_killed_grid_resumes_with_only_the_missing_cells(tmp_path: Path) -> None:
    cells = grid_cells()
    killed = [Cell(c.victim, c.defense, c.seed, c.params, run_options={"interrupt_on_call": 3}) for c in cells]
    with pytest.raises(KeyboardInterrupt):
        run_grid(killed, toy_cell, tmp_path, serial=True, progress=False)
    assert [CellStore(tmp_path, toy_cell).path(c).is_file() for c in cells] == [True, True, False, False]
    assert not [p for p in (tmp_path / "cells").iterdir() if p.name.startswith(".")]  # no half-written file

    resumed = run_grid(cells, toy_cell, tmp_path, serial=True, progress=False)
    assert (resumed.computed, resumed.skipped) == (2, 2)
    assert [calls(tmp_path, c) for c in cells] == [1, 1, 1, 1]

    CellStore(tmp_path, toy_cell).path(cells[1]).unlink()  # as if the process died before storing it
    assert run_grid(cells, toy_cell, tmp_path, serial=True, progress=False).computed == 1
    assert [calls(tmp_path, c) for c in cells] == [1, 2, 1, 1]


def test_changed_params_recompute_only_that_cell(tmp_path: Path) -> None:
    cells = grid_cells()
    run_grid(cells, toy_cell, tmp_path, serial=True, progress=False)
    changed = [*cells[:3], Cell(cells[3].victim, cells[3].defense, cells[3].seed, {"bonus": 7})]
    assert CellStore(tmp_path, toy_cell).lookup(changed[3])["status"] == STALE
    result = run_grid(changed, toy_cell, tmp_path, serial=True, progress=False)
    assert (result.computed, result.skipped) == (1, 3)
    assert [calls(tmp_path, c) for c in cells] == [1, 1, 1, 1]  # the changed cell's work folder started empty
    assert stored(tmp_path, changed[3])["params"] == {"bonus": 7}
    assert result.records[3]["result"]["score"] == 17


def test_user_error_in_a_cell_is_recorded_and_retried_later(tmp_path: Path) -> None:
    cells = grid_cells(**{"sst2-badnets": {"fail": True}})
    result = run_grid(cells, toy_cell, tmp_path, serial=True, progress=False)
    assert [r["status"] for r in result.records] == ["error", "error", "ok", "ok"]
    assert [r["id"] for r in result.errors] == [cells[0].id, cells[1].id]
    record = stored(tmp_path, cells[0])
    assert record["error"] == "toy failure in sst2-badnets" and record["result"] is None
    assert record["seconds"] >= 0
    rerun = run_grid(cells, toy_cell, tmp_path, serial=True, progress=False)
    assert (rerun.computed, rerun.skipped) == (2, 2)
    assert [calls(tmp_path, c) for c in cells] == [2, 2, 1, 1]


def test_a_bug_in_a_cell_stops_the_grid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a bug"):
        run_grid(grid_cells(), buggy_cell, tmp_path, serial=True, progress=False)
    assert not list(tmp_path.glob("cells/*.json"))


def test_progress_prints_a_line_per_finished_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cells = grid_cells(**{"sst2-badnets": {"fail": True}})
    run_grid(cells, toy_cell, tmp_path, serial=True)
    out = capsys.readouterr().out
    assert f"{cells[0].id}: error in" in out and "toy failure in sst2-badnets" in out
    assert f"{cells[3].id}: ok in" in out


# ------------------------------------------------------------------------ report-only
def _plot(path: Path) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    figure.subplots().plot([0, 1], [1, 0])
    figure.savefig(path, format="png")
    return path


def test_report_only_computes_nothing_and_marks_missing_cells(tmp_path: Path) -> None:
    cells = grid_cells()
    run_grid(cells[:2], toy_cell, tmp_path, serial=True, progress=False)
    changed = Cell(cells[1].victim, cells[1].defense, cells[1].seed, {"bonus": 1})
    wanted = [cells[0], changed, *cells[2:]]
    result = run_grid(wanted, toy_cell, tmp_path, report_only=True, progress=False)
    assert result.computed == 0
    assert [r["status"] for r in result.records] == [OK, STALE, NOT_RUN, NOT_RUN]
    assert [calls(tmp_path, c) for c in cells] == [1, 1, 0, 0]
    assert len(list((tmp_path / "cells").iterdir())) == 2

    plot = _plot(tmp_path / "scores.png")
    tables = [cell_table(result.records, ["score"]),
              pivot_table("score by victim and defense", result.records, mean_std("score"))]
    markdown, page = write_report(tmp_path / "report", "Toy grid", tables, [plot], notes=["tiny test grid"])
    md, text = markdown.read_text(), page.read_text()
    for body in (md, text):
        assert "not run" in body and "stale" in body and "Toy grid" in body and "tiny test grid" in body
    assert "| sst2-badnets | 0.0 (1 stale) |" in md  # seed 0 finished, seed 1 stale
    assert "| sst2-addsent | 2 not run |" in md
    assert "![scores](../scores.png)" in md
    embedded = text.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(embedded) == plot.read_bytes()
    assert "http" not in text.replace('lang="en"', "")  # no external assets
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.startswith(".")]


def test_pivot_table_averages_seeds_and_formats_values() -> None:
    records = [{"victim": "v", "defense": d, "seed": s, "status": OK, "result": {"asr": a}}
               for d, s, a in (("none", 0, 0.9), ("none", 1, 0.7), ("onion", 0, 0.2))]
    table = pivot_table("ASR", records, mean_std("asr", scale=100))
    assert table.columns == ["victim", "none", "onion"]
    assert table.formatted() == [["v", "80.0 ± 14.1", "20.0"]]


def test_report_refuses_missing_or_non_png_plots_and_ragged_tables(tmp_path: Path) -> None:
    table = TableSpec("t", ["a"], [[1]])
    with pytest.raises(BackdoorLabError, match="does not exist"):
        write_report(tmp_path, "r", [table], [tmp_path / "missing.png"])
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(BackdoorLabError, match="not a PNG"):
        write_report(tmp_path, "r", [table], [tmp_path / "fake.png"])
    assert not (tmp_path / "report.md").exists()
    with pytest.raises(BackdoorLabError, match="2 values for 1 columns"):
        TableSpec("t", ["a"], [[1, 2]])


def test_html_escapes_values(tmp_path: Path) -> None:
    _, page = write_report(tmp_path, "<b>", [TableSpec("t", ["a"], [["<script>x</script>"]])])
    text = page.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "<title>&lt;b&gt;</title>" in text


# ---------------------------------------------------------------------------- options
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_grid_arguments(parser, default_out="runs/x")
    return parser


def test_grid_arguments() -> None:
    args = _parser().parse_args(["--seeds", "0,2", "--serial", "--out", "o"])
    assert args.seeds == [0, 2]
    kwargs = grid_kwargs(args)
    assert kwargs.pop("command").startswith("python ")
    assert kwargs == {"out": Path("o"), "results": None, "serial": True, "ray_address": None, "report_only": False}
    args = _parser().parse_args(["--ray-address", "auto", "--report-only", "--results", "ledger"])
    kwargs = grid_kwargs(args)
    del kwargs["command"]
    assert kwargs == {"out": Path("runs/x"), "results": Path("ledger"), "serial": False, "ray_address": "auto",
                      "report_only": True}
    assert args.seeds == [0]
    for bad in (["--serial", "--ray-address", "auto"], ["--seeds", "1,x"], ["--seeds", "1,1"], ["--seeds", ","]):
        with pytest.raises(SystemExit):
            _parser().parse_args(bad)


def test_serial_and_ray_address_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="--serial"):
        run_grid(grid_cells(), toy_cell, tmp_path, serial=True, ray_address="auto", progress=False)


# -------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    """One small local Ray for this module; its workers import this test module from PYTHONPATH."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_grid_on_local_ray_stores_errors_and_resumes(tmp_path: Path, local_ray) -> None:  # type: ignore[no-untyped-def]
    cells = grid_cells(**{"sst2-addsent": {"fail": True}})
    result = run_grid(cells, toy_cell, tmp_path, progress=False)
    assert result.computed == 4
    assert [r["status"] for r in result.records] == ["ok", "ok", "error", "error"]
    assert all(r["result"]["pid"] != os.getpid() for r in result.records[:2])  # ran in Ray workers
    assert stored(tmp_path, cells[2])["error"] == "toy failure in sst2-addsent"
    assert local_ray.is_initialized()  # a session it did not start is left running

    CellStore(tmp_path, toy_cell).path(cells[0]).unlink()
    fixed = [*cells[:2], *grid_cells()[2:]]
    resumed = run_grid(fixed, toy_cell, tmp_path, progress=False)
    assert (resumed.computed, resumed.skipped) == (3, 1)
    assert [r["status"] for r in resumed.records] == [OK] * 4
    assert [calls(tmp_path, c) for c in cells] == [2, 1, 1, 1]  # the fixed cells (other params) started afresh


def test_cells_asking_for_a_missing_gpu_fail_fast(tmp_path: Path, local_ray) -> None:  # type: ignore[no-untyped-def]
    cells = [Cell("v", "d", kind="gpu")]
    with pytest.raises(BackdoorLabError, match="1 GPU"):
        run_grid(cells, toy_cell, tmp_path, resources={"gpu": Resources(num_cpus=1, num_gpus=1)}, progress=False)
    assert calls(tmp_path, cells[0]) == 0


def test_ray_cells_use_as_many_threads_as_cores_they_reserve(tmp_path: Path, local_ray) -> None:  # type: ignore[no-untyped-def]
    kinds = {"one": Resources(num_cpus=1), "two": Resources(num_cpus=2)}
    first = run_grid([Cell("v", "d", kind="one")], torch_threads_cell, tmp_path, resources=kinds, progress=False)
    second = run_grid([Cell("w", "d", kind="two")], torch_threads_cell, tmp_path, resources=kinds, progress=False)
    assert first.records[0]["result"]["threads"] == 1
    assert second.records[0]["result"]["threads"] == 2  # also when Ray reuses the first task's worker


def test_a_recomputed_cell_never_resumes_work_of_other_params(tmp_path: Path) -> None:
    cell = Cell("v", "d", 0, {"bonus": 1})
    store = CellStore(tmp_path, toy_cell)
    run_grid([cell], toy_cell, tmp_path, serial=True, progress=False)
    (store.workdir(cell) / "half-done.txt").write_text("work of bonus=1")
    same = store.claim_workdir(cell)  # the same cell again (e.g. after an interruption): its work is kept
    assert (same / "half-done.txt").is_file()
    changed = Cell("v", "d", 0, {"bonus": 2})
    run_grid([changed], toy_cell, tmp_path, serial=True, progress=False)
    assert not (store.workdir(changed) / "half-done.txt").exists() and calls(tmp_path, changed) == 1


def test_data_identity_names_content_not_this_machines_paths(tmp_path: Path) -> None:
    from backdoorlab.bench.options import data_identity

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a", "label": 0}\n')
    folder = tmp_path / "saved-dataset"
    folder.mkdir()
    (folder / "examples.jsonl").write_text('{"text": "a", "label": 0}\n')
    for data in (rows, folder):
        identity = data_identity(data)
        assert identity is not None and str(tmp_path) not in identity
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    (copy / "examples.jsonl").write_text('{"text": "a", "label": 0}\n')
    assert data_identity(copy) == data_identity(folder)  # the same rows on another machine
    (copy / "examples.jsonl").write_text('{"text": "b", "label": 0}\n')
    assert data_identity(copy) != data_identity(folder)
    assert data_identity("sst2") == "sst2" and data_identity(None) is None
