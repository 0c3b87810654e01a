"""Shared test set-up: offline hub, the benchmark data folder beside the checkout, a model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("BACKDOORLAB_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

from backdoorlab.settings import settings  # noqa: E402  (after the environment is set)

settings.offline = True
settings.data_dir = Path(os.environ["BACKDOORLAB_DATA_DIR"])


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The benchmark data folder: $BACKDOORLAB_DATA_DIR, else ../shared/data beside the checkout."""
    path = Path(os.environ["BACKDOORLAB_DATA_DIR"])
    if not (path / "classification").is_dir():
        pytest.skip(f"benchmark data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def one_torch_thread(request):  # type: ignore[no-untyped-def]
    """Tiny test models gain nothing from intra-op threads and lose a lot to them on a busy 2-core machine
    (tests marked ``integration``, on real models, keep the default)."""
    import torch

    if request.node.get_closest_marker("integration"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


LEDGER = Path(__file__).resolve().parents[1] / "results"


def _ledger_state() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in LEDGER.rglob("*")} if LEDGER.is_dir() else {}


@pytest.fixture(scope="session", autouse=True)
def ledger_untouched():  # type: ignore[no-untyped-def]
    """No test may write into the repository's results ledger (tests pass ``--results`` of their own)."""
    before = _ledger_state()
    yield
    assert _ledger_state() == before, "a test wrote into the committed results/ ledger"
