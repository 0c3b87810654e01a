"""Benchmark grids: cells (victim × defense × seed) computed as Ray tasks, stored per cell, reported."""

from .cell import Cell, CellFunction, Resources
from .grid import GridResult, run_grid, unfinished
from .options import add_grid_arguments, grid_kwargs, ledger_folder
from .report import TableSpec, cell_table, mean_std, pivot_table, write_report
from .store import ERROR, NOT_RUN, OK, STALE, CellStore

__all__ = ["Cell", "CellFunction", "CellStore", "ERROR", "GridResult", "NOT_RUN", "OK", "Resources", "STALE",
           "TableSpec", "add_grid_arguments", "cell_table", "grid_kwargs", "ledger_folder", "mean_std", "pivot_table",
           "run_grid", "unfinished", "write_report"]
