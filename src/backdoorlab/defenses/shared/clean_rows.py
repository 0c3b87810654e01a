"""Options and data access shared by every defense that learns from the defender's clean rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...data.records import Dataset
from ...errors import BackdoorLabError
from ..base import Defense
from ..inputs import DefenderInputs


@dataclass
class CleanRowsDefense(Defense):
    """A defense that learns from a sample of the defender's clean rows."""

    needs: ClassVar[tuple[str, ...]] = ("clean_rows",)

    max_clean: int = 200  # clean rows used (a seeded sample of the defender's clean rows)
    seed: int = 0  # seed of the clean-row sample and of the method's own randomness

    def clean_rows(self, inputs: DefenderInputs) -> Dataset:
        """A seeded sample of ``max_clean`` of the defender's clean rows; a clear error when there are none."""
        rows: Dataset = inputs.require("clean_rows", self.name).sample(self.max_clean, self.seed)
        if len(rows) == 0:
            raise BackdoorLabError(f"{self.name} needs clean reference rows; max_clean={self.max_clean} leaves none")
        return rows
