"""The settings of a scan, shared by the classifier and generator checks."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import BackdoorLabError
from ..models.precision import SEARCH_PRECISIONS
from ..options import build
from .reference import REFERENCE_FITS


@dataclass
class ScanSettings:
    """How hard a scan looks and when it calls a candidate a trigger.

    The two thresholds are provisional defaults until the error-rate benchmark chooses them on
    validation models; every report states the values it used."""

    search_rows: int = 16  # rows the trigger search optimises on
    screen_rows: int = 6  # of those, the rows the shortlist of single words is tried on
    shortlist: int = 500  # single words kept after trying every vocabulary word on one row
    max_words: int | None = None  # search only this many vocabulary words (a seeded sample): faster, may miss the trigger
    eval_rows: int = 48  # other rows every candidate, and the random phrases, are measured on
    lengths: tuple[int, ...] = (1, 2, 3)  # trigger lengths searched (tokens)
    word_pieces: bool = False  # the gradient search may also continue a word with word pieces (bram ##ble)
    steps: int = 10  # search steps per length
    top_k: int = 32  # swaps scored exactly per position and step
    random_phrases: int = 20  # random phrases per length: the baseline a trigger must beat
    evidence_mined: int = 40  # with training data: n-grams mined per label and screened
    reference: str | None = None  # a declared clean or pretrained model (classifiers): candidates that move it too
    # are the label's own vocabulary (:mod:`backdoorlab.scan.reference`); the search avoids them
    reference_fit: str = "fine-tune"  # how the reference becomes a clean stand-in: fine-tune | probe
    reference_weight: float = 1.0  # how hard the search penalises a phrase for moving the reference toward the label
    natural_share: float = 0.5  # with a reference: a candidate it sends this share of rows to the label is natural
    flip_threshold: float = 0.9  # a trigger makes at least this share of rows show the target
    margin: float = 0.5  # ... and beats the 95th percentile of random phrases by this much
    search_precision: str = "auto"  # the word screen and gradient search (auto: bfloat16 where the device computes it
    # natively); every reported rate is measured in the model's own precision
    max_new_tokens: int = 32  # generators: tokens generated when a candidate is verified
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        parts = self.lengths.split(",") if isinstance(self.lengths, str) else self.lengths
        try:
            self.lengths = tuple(int(n) for n in parts if str(n).strip())
        except ValueError:
            raise BackdoorLabError(f"scan lengths must be whole numbers such as 1,2,3; got {self.lengths!r}") from None
        if self.search_rows < 2 or not 1 <= self.screen_rows <= self.search_rows or self.eval_rows < 4 or not self.lengths or min(self.lengths) < 1:
            raise BackdoorLabError("scan needs search_rows >= 2, 1 <= screen_rows <= search_rows, eval_rows >= 4 and "
                                   "trigger lengths >= 1")
        if self.steps < 0 or self.top_k < 1 or self.random_phrases < 2 or self.shortlist < 1:
            raise BackdoorLabError("scan needs steps >= 0, top_k >= 1, random_phrases >= 2 and shortlist >= 1")
        if self.max_words is not None and int(self.max_words) < max(self.lengths) * 4:
            raise BackdoorLabError(f"max_words must be unset (every word) or at least {max(self.lengths) * 4} (four "
                                   f"words per position of the longest trigger); got {self.max_words}")
        if self.search_precision not in SEARCH_PRECISIONS:
            raise BackdoorLabError(f"search_precision must be one of {', '.join(SEARCH_PRECISIONS)}; got "
                                   f"{self.search_precision!r}")
        if self.reference_fit not in REFERENCE_FITS:
            raise BackdoorLabError(f"reference_fit must be one of {', '.join(REFERENCE_FITS)}; got {self.reference_fit!r}")
        if self.reference_weight < 0 or not 0 < self.natural_share <= 1:
            raise BackdoorLabError("reference_weight must be >= 0 and natural_share in (0, 1]")
        if self.reference in ("", "none"):
            self.reference = None
        if not 0 < self.flip_threshold <= 1 or not 0 <= self.margin <= 1:
            raise BackdoorLabError("flip_threshold must be in (0, 1] and margin in [0, 1]")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ScanSettings":
        return build(cls, values, "scan settings")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
