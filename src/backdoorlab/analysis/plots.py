"""PNG figures of the attribution analyses (matplotlib, headless, written atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..report import save_figure_atomic


def _figure(path: Path, draw: Any, size: tuple[float, float] = (6.4, 4.0)) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        draw(fig, ax)
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def probe_accuracy(path: Path, mlp: Sequence[float], svm: Sequence[float], title: str) -> Path:
    def draw(fig: Any, ax: Any) -> None:
        ax.plot(range(len(mlp)), mlp, marker="o", label="MLP probe")
        ax.plot(range(len(svm)), svm, marker="s", label="RBF SVM")
        ax.axhline(0.5, color="grey", linestyle=":", label="chance")
        ax.set(xlabel="layer", ylabel="held-out accuracy", ylim=(0.4, 1.02), title=title)
        ax.legend()
    return _figure(path, draw)


def heatmap(path: Path, matrix: Sequence[Sequence[float]], title: str, xlabel: str, ylabel: str,
            colorbar: str, diverging: bool = False) -> Path:
    def draw(fig: Any, ax: Any) -> None:
        import numpy as np

        values = np.asarray(matrix, dtype=float)
        options: dict[str, Any] = {"aspect": "auto", "origin": "lower"}
        if diverging:
            bound = float(np.nanmax(np.abs(values))) or 1.0
            options.update(cmap="RdBu_r", vmin=-bound, vmax=bound)
        image = ax.imshow(values, **options)
        fig.colorbar(image, ax=ax, label=colorbar)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return _figure(path, draw, (6.4, 5.0))


def scatter(path: Path, x: Sequence[float], y: Sequence[float], title: str, xlabel: str, ylabel: str) -> Path:
    def draw(fig: Any, ax: Any) -> None:
        ax.scatter(x, y, s=12)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return _figure(path, draw)


def curves(path: Path, x: Sequence[float], series: dict[str, Sequence[float]], title: str, xlabel: str,
           utility: tuple[str, Sequence[float]] | None = None) -> Path:
    """Rates (0–1) on the left axis; an optional utility series on a right axis."""
    def draw(fig: Any, ax: Any) -> None:
        for label, values in series.items():
            ax.plot(x, values, marker="o", label=label)
        ax.set(xlabel=xlabel, ylabel="rate", ylim=(-0.02, 1.02), title=title)
        handles, labels = ax.get_legend_handles_labels()
        if utility is not None:
            right = ax.twinx()
            right.plot(x, utility[1], color="black", linestyle="--", marker="x", label=utility[0])
            right.set_ylabel(utility[0])
            more = right.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, loc="best", fontsize="small")
    return _figure(path, draw)
