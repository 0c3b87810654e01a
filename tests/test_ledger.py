"""The results ledger: records that travel with the repository, and fingerprints that see code changes."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from backdoorlab.bench import Cell, CellStore, run_grid, unfinished
from backdoorlab.bench.store import MAX_RECORD_BYTES, REFINGERPRINTED, STALE
from backdoorlab.codeversion import BOOKKEEPING, CODE_FORMS, PACKAGE_ROOT, code_digest, dependency_files, method_packages
from backdoorlab.errors import BackdoorLabError

REPO = Path(__file__).resolve().parents[1]
LEDGER = REPO / "results"


def counting_cell(cell: Cell, workdir: Path) -> dict:
    """Counts its calls in a file beside the work folders (which a fresh machine does not have)."""
    log = Path(cell.run_options["log"])
    with log.open("a") as handle:
        handle.write(cell.id + "\n")
    if cell.params.get("huge"):
        return {"generations": ["x" * 1000] * 100}
    return {"score": cell.seed}


def computed(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.is_file() else []


def _cells(log: Path, code: dict[str, str] | None = None) -> list[Cell]:
    code = code or {}
    return [Cell(victim, "d", seed, {}, run_options={"log": str(log)},
                 code=(code[victim],) if victim in code else ())
            for victim in ("a", "b") for seed in (0, 1)]


def test_a_grid_continues_on_another_machine_from_the_committed_ledger(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    cells = _cells(log)
    first = run_grid(cells[:3], counting_cell, tmp_path / "machine1" / "runs",
                     results=tmp_path / "machine1" / "repo" / "results", serial=True, progress=False,
                     command="python bench.py")
    assert first.computed == 3 and len(computed(log)) == 3
    record = json.loads((tmp_path / "machine1/repo/results" / f"{cells[0].id}.json").read_text())
    assert record["command"] == "python bench.py" and record["result"] == {"score": 0}
    assert not (tmp_path / "machine1/runs/cells").exists()  # records live in the ledger only

    # a fresh clone on another machine: the ledger came with the repository, runs/ did not
    shutil.copytree(tmp_path / "machine1/repo", tmp_path / "machine2/repo")
    shutil.rmtree(tmp_path / "machine1")
    ledger, runs = tmp_path / "machine2/repo/results", tmp_path / "machine2/runs"
    assert unfinished(cells, counting_cell, runs, ledger) == [cells[3]]
    second = run_grid(cells, counting_cell, runs, results=ledger, serial=True, progress=False)
    assert (second.computed, second.skipped) == (1, 3)
    assert computed(log) == [c.id for c in cells]  # nothing computed twice
    again = run_grid(cells, counting_cell, runs, results=ledger, serial=True, progress=False)
    assert again.computed == 0


def test_editing_one_cells_code_recomputes_only_that_cell(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    impl_a, impl_b = tmp_path / "method_a.py", tmp_path / "method_b.py"
    impl_a.write_text("RATE = 1\n")
    impl_b.write_text("RATE = 2\n")
    cells = _cells(log, {"a": str(impl_a), "b": str(impl_b)})
    kwargs = {"results": tmp_path / "ledger", "serial": True, "progress": False}
    run_grid(cells, counting_cell, tmp_path / "runs", **kwargs)

    impl_a.write_text("RATE = 1  # a comment changes nothing\n\n")
    assert run_grid(cells, counting_cell, tmp_path / "runs", **kwargs).computed == 0

    impl_a.write_text("RATE = 3\n")
    store = CellStore(tmp_path / "runs", counting_cell, tmp_path / "ledger")
    assert [store.lookup(c)["status"] for c in cells] == [STALE, STALE, "ok", "ok"]
    report = run_grid(cells, counting_cell, tmp_path / "runs", report_only=True, **kwargs)
    assert [r["status"] for r in report.records] == [STALE, STALE, "ok", "ok"]
    rerun = run_grid(cells, counting_cell, tmp_path / "runs", **kwargs)
    assert (rerun.computed, rerun.skipped) == (2, 2)
    assert computed(log)[4:] == [cells[0].id, cells[1].id]


def test_a_record_too_large_for_the_ledger_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    cell = Cell("a", "d", 0, {"huge": True}, run_options={"log": str(log)})
    with pytest.raises(BackdoorLabError, match="work folder"):
        run_grid([cell], counting_cell, tmp_path / "runs", results=tmp_path / "ledger", serial=True, progress=False)
    assert not (tmp_path / "ledger" / f"{cell.id}.json").exists()


# ------------------------------------------------------------------------ code digests
@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package's source to edit."""
    root = tmp_path_factory.mktemp("src") / "backdoorlab"
    shutil.copytree(PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@contextlib.contextmanager
def edited(path: Path) -> Iterator[None]:
    """``path`` with a statement that runs on import added, for the duration of the block."""
    original = path.read_text()
    path.write_text(original + "\nprint('edited')\n")
    try:
        yield
    finally:
        path.write_text(original)


def _digests(root: Path) -> dict[str, str]:
    stages = ["backdoorlab.training", "backdoorlab.evaluation", "backdoorlab.analysis.runner"]
    return {name: code_digest([name], root=root) for name in sorted(method_packages(root)) + stages}


def test_editing_one_defense_stales_its_own_results_and_no_other_defenses(source_copy: Path) -> None:
    before = _digests(source_copy)
    with edited(source_copy / "defenses" / "onion" / "defense.py"):
        after = _digests(source_copy)
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["backdoorlab.defenses.onion"]
    assert _digests(source_copy) == before


def test_a_method_built_on_another_counts_that_ones_code(source_copy: Path) -> None:
    files = dependency_files(["backdoorlab.defenses.bd_vax"], root=source_copy)
    assert "backdoorlab.defenses.fine_tune.defense" in files  # BD-VAX repairs with the fine-tuning defense
    assert "backdoorlab.defenses.onion.defense" not in files
    before = code_digest(["backdoorlab.defenses.bd_vax"], root=source_copy)
    with edited(source_copy / "defenses" / "fine_tune" / "defense.py"):
        assert code_digest(["backdoorlab.defenses.bd_vax"], root=source_copy) != before


def test_editing_shared_code_stales_every_result_that_imports_it(source_copy: Path) -> None:
    before = _digests(source_copy)
    with edited(source_copy / "models" / "victim.py"):
        after = _digests(source_copy)
    assert all(before[name] != after[name] for name in before)


def test_framework_code_that_picks_a_method_at_run_time_counts_every_method_by_default(source_copy: Path) -> None:
    own = dependency_files(["backdoorlab.defenses.runner"], root=source_copy)
    every = dependency_files(["backdoorlab.defenses.runner"], methods=None, root=source_copy)
    named = dependency_files(["backdoorlab.defenses.runner"], methods=["rap"], root=source_copy)
    assert not any(".onion" in name or ".rap" in name for name in own)  # the runner itself imports no method
    assert "backdoorlab.defenses.onion.defense" in every and "backdoorlab.defenses.rap.defense" in every
    assert "backdoorlab.defenses.rap.defense" in named and "backdoorlab.defenses.onion.defense" not in named
    with pytest.raises(BackdoorLabError, match="not a defense method"):
        dependency_files(["backdoorlab.training"], methods=["teleport"], root=source_copy)
    with pytest.raises(BackdoorLabError, match="no such backdoorlab module"):
        code_digest(["backdoorlab.nothing_here"], root=source_copy)


def _digest_with(path: Path, text: str, root: Path, roots: list[str]) -> str:
    path.write_text(text)
    return code_digest(roots, root=root)


def test_docstrings_formatting_and_where_imports_sit_do_not_count(source_copy: Path) -> None:
    target, roots = source_copy / "defenses" / "onion" / "defense.py", ["backdoorlab.defenses.onion"]
    original = target.read_text()
    before = code_digest(roots, root=source_copy)
    try:
        assert original.startswith('"""')
        reworded = original.replace('"""', '"""Reworded. ', 1)  # the module docstring
        assert _digest_with(target, reworded, source_copy, roots) == before
        local_import = original + "\n\n\ndef helper(  x ):\n    'doc'\n    import json\n    return json.dumps(x)\n\n\nprint(helper(1))\n"
        with_helper = _digest_with(target, local_import, source_copy, roots)
        assert with_helper != before  # a new function that runs is code
        top_import = original + "\nimport json\n\ndef helper(x):\n    return json.dumps(x)\n\nprint(helper(1))\n"
        assert _digest_with(target, top_import, source_copy, roots) == with_helper
        assert _digest_with(target, top_import.replace("dumps(x)", "dumps(x + 1)"), source_copy, roots) != with_helper
    finally:
        target.write_text(original)
    assert code_digest(roots, root=source_copy) == before


def test_code_outside_the_defenses_that_imports_a_method_counts_its_code(source_copy: Path) -> None:
    files = dependency_files(["backdoorlab.scan.classifier"], root=source_copy)
    assert "backdoorlab.defenses.shared.label_screening" in files
    assert not {"backdoorlab.defenses.onion", "backdoorlab.defenses.badllm_tg"} & set(files)  # the registry pulls no method
    user = source_copy / "scan" / "uses_a_method.py"
    user.write_text("from ..defenses.badllm_tg.trigger_pattern import TriggerPattern\n\nPATTERN = TriggerPattern\n")
    try:
        assert "backdoorlab.defenses.badllm_tg.trigger_pattern" in dependency_files(["backdoorlab.scan.uses_a_method"],
                                                                                   root=source_copy)
        before = code_digest(["backdoorlab.scan.uses_a_method"], root=source_copy)
        with edited(source_copy / "defenses" / "badllm_tg" / "trigger_pattern.py"):
            assert code_digest(["backdoorlab.scan.uses_a_method"], root=source_copy) != before
    finally:
        user.unlink()


def test_registering_a_new_method_leaves_other_results_current(source_copy: Path) -> None:
    init, package = source_copy / "defenses" / "__init__.py", source_copy / "defenses" / "zz_new_method"
    roots, original = ["backdoorlab.defenses", "backdoorlab.defenses.onion"], init.read_text()
    before = {form: code_digest(roots, methods=["rap"], root=source_copy, form=form) for form in CODE_FORMS}
    try:
        package.mkdir()
        (package / "__init__.py").write_text("RATE = 1\n")
        init.write_text(original.replace("    attribution,\n", "    attribution,\n    zz_new_method,\n", 1))
        assert "zz_new_method" in init.read_text()
        for form in ("reach", "files"):
            assert code_digest(roots, methods=["rap"], root=source_copy, form=form) == before[form], form
        assert code_digest(roots, methods=["rap"], root=source_copy, form="files-legacy") != before["files-legacy"]
        init.write_text(init.read_text() + "\nprint('edited')\n")  # any other edit of the registry module counts
        for form in CODE_FORMS:
            assert code_digest(roots, methods=["rap"], root=source_copy, form=form) != before[form], form
    finally:
        init.write_text(original)
        shutil.rmtree(package, ignore_errors=True)
    assert code_digest(roots, methods=["rap"], root=source_copy) == before["reach"]


def test_bookkeeping_modules_do_not_count_and_computing_ones_do(source_copy: Path) -> None:
    roots = ["backdoorlab.defenses.runner", "backdoorlab.training"]
    files = dependency_files(roots, root=source_copy)
    assert not set(files) & BOOKKEEPING
    assert "backdoorlab.evaluation" in files and "backdoorlab.models.victim" in files
    before = code_digest(roots, root=source_copy)
    for module in ("fingerprint.py", "reuse.py", "fileio.py", "bench/store.py"):
        with edited(source_copy / module):
            assert code_digest(roots, root=source_copy) == before, module
    with edited(source_copy / "evaluation.py"):
        assert code_digest(roots, root=source_copy) != before


SCRIPT = """\"\"\"A benchmark script.\"\"\"
import json
from pathlib import Path

SCALE = 2
LABELS = {"a": "first"}


def helper(x):
    return x * SCALE


def cell(cell, workdir: Path):
    return {"score": helper(cell.seed)}


def table(records):
    return json.dumps([LABELS[r["victim"]] for r in records])


if __name__ == "__main__":
    print(table([]))
"""


def test_a_script_function_counts_only_the_script_code_it_reaches(tmp_path: Path) -> None:
    script = tmp_path / "bench_x.py"
    script.write_text(SCRIPT)
    entry = f"{script}::cell"
    before = code_digest([entry])
    edits = {"the table": ('"first"', '"second"'), "the main block": ("print(table([]))", "print(1)"),
             "an import only the table uses": ("import json\n", "import json\nimport csv\n")}
    for what, (old, new) in edits.items():
        script.write_text(SCRIPT.replace(old, new))
        assert code_digest([entry]) == before, what
    for what, (old, new) in {"a helper it calls": ("x * SCALE", "x * SCALE + 1"),
                             "a constant the helper reads": ("SCALE = 2", "SCALE = 3"),
                             "the function itself": ('{"score"', '{"points"')}.items():
        script.write_text(SCRIPT.replace(old, new))
        assert code_digest([entry]) != before, what
    script.write_text(SCRIPT)
    assert code_digest([entry]) == before
    with pytest.raises(BackdoorLabError, match="defines no top-level 'missing'"):
        code_digest([f"{script}::missing"])


def _load_script(path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_records_of_an_earlier_form_stay_current_until_its_code_changes_and_are_rewritten(tmp_path: Path) -> None:
    script = tmp_path / "bench_y.py"
    script.write_text(SCRIPT)
    fn = _load_script(script).cell
    cells = [Cell("a", "d", 0, {}), Cell("a", "d", 1, {})]
    kwargs = {"results": tmp_path / "ledger", "serial": True, "progress": False}
    assert run_grid(cells, fn, tmp_path / "runs", **kwargs).computed == 2
    store = CellStore(tmp_path / "runs", fn, tmp_path / "ledger")
    for cell in cells:  # records written when the digest covered the whole script, file by file
        record = json.loads(store.path(cell).read_text())
        record["fingerprint"] = store._fingerprint(cell, whole_script=True, form="files-legacy")
        store.path(cell).write_text(json.dumps(record))
    assert store.lookup(cells[0])["status"] == "ok"
    rewritten = json.loads(store.path(cells[0]).read_text())
    assert rewritten["fingerprint"] == store.fingerprint(cells[0]) and REFINGERPRINTED in rewritten

    script.write_text(SCRIPT.replace('"first"', '"second"'))  # the table only: the old form saw it, the current does not
    store = CellStore(tmp_path / "runs", fn, tmp_path / "ledger")
    assert [store.lookup(c)["status"] for c in cells] == ["ok", STALE]
    assert run_grid(cells, fn, tmp_path / "runs", **kwargs).computed == 1


# ------------------------------------------------------------------- the committed ledger
def _ledger_records() -> list[Path]:
    return sorted(LEDGER.rglob("*.json")) if LEDGER.is_dir() else []


@pytest.mark.parametrize("path", _ledger_records(), ids=lambda p: str(p.relative_to(LEDGER)))
def test_committed_records_are_small_portable_and_complete(path: Path) -> None:
    assert path.stat().st_size <= MAX_RECORD_BYTES
    record = json.loads(path.read_text(encoding="utf-8"))
    for key in ("id", "victim", "defense", "seed", "params", "status", "result", "minutes", "command", "cpus",
                "fingerprint"):
        assert key in record, f"{path} lacks {key}"
    assert len(record["fingerprint"]["code"]) == 64
    text = json.dumps(record["params"])
    assert str(REPO) not in text and "/tmp/" not in text and "/home/" not in text, \
        f"{path}: params hold a machine's path; pass it through run_options"
