"""The results pages in docs/ are generated from the committed ledger, byte for byte."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from backdoorlab.bench import CellStore

REPO = Path(__file__).resolve().parents[1]


def publisher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("publish", REPO / "benchmarks" / "publish.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def publish() -> ModuleType:
    return publisher()


def test_committed_results_pages_are_what_the_ledger_gives(publish: ModuleType, shared_data_dir: Path) -> None:
    differing = publish.differing(REPO / "docs")
    assert differing == [], f"{differing} differ from the ledger's pages; run `python benchmarks/publish.py`"


def test_a_figure_typed_into_a_page_or_a_missing_page_is_caught(publish: ModuleType, shared_data_dir: Path,
                                                                tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    publish.generate(docs)
    assert publish.differing(docs) == []
    page = docs / "results" / "badllm_tg.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n| sst2 | Wordbkd | badllm-tg | 91.0 | 3.2 |\n")
    (docs / "results" / "attribution.md").unlink()
    assert sorted(publish.differing(docs)) == ["results/attribution.md", "results/badllm_tg.md"]


def test_a_ledger_record_reaches_its_page(publish: ModuleType, shared_data_dir: Path, tmp_path: Path) -> None:
    """A finished cell in the ledger shows its figures; the same cell with other code shows as stale."""
    bench = publish.load_script("bench_attribution")
    ledger = tmp_path / "results"
    (cell,) = bench.task_cells(bench.argument_parser().parse_args([]), ["alpaca_begin"])

    store = CellStore(tmp_path / "runs", bench.attribution_cell, ledger / "attribution")
    row = {"backdoor": "alpaca_begin", "victim ASR": 0.987654}
    store.save(cell, {"status": "ok", "result": row, "seconds": 60.0}, command="python benchmarks/bench_attribution.py")
    docs = tmp_path / "docs"
    publish.generate(docs, ledger)
    page = (docs / "results" / "attribution.md").read_text(encoding="utf-8")
    assert "| alpaca_begin | 98.8% |" in page, page  # the record's figure, formatted
    assert "| alpaca_begin | attribution | 0 | ok | 60 |" in page and "| agnews_sentence | attribution | 0 | not run |" in page
    index = (docs / "benchmarks.md").read_text(encoding="utf-8")
    assert "| [Backdoor attribution](results/attribution.md) | 1 |" in index

    record = store.path(cell)
    text = record.read_text(encoding="utf-8")
    record.write_text(text.replace('"code": "', '"code": "0'))  # as if computed by other code
    publish.generate(docs, ledger)
    stale = (docs / "results" / "attribution.md").read_text(encoding="utf-8")
    assert "| alpaca_begin | attribution | 0 | stale |" in stale and "98.8%" not in stale


def test_the_publisher_copies_plots_beside_the_pages(publish: ModuleType, tmp_path: Path) -> None:
    source, target = tmp_path / "report", tmp_path / "docs" / "results"
    source.mkdir()
    shutil.copyfile(REPO / "docs" / "img" / "lora_update_ablation.png", source / "sweep.png")
    page = publish.PAGES[0]
    text = publish._move_plots("before\n![sweep](sweep.png)\nafter", page, source, target)
    assert text == f"before\n![sweep](img/{page.name}-sweep.png)\nafter"
    assert (target / "img" / f"{page.name}-sweep.png").read_bytes() == (source / "sweep.png").read_bytes()
