"""The backdoor signature: the components every synthetic backdoor changed, strongly and alike.

BD-VAX (arXiv 2603.13461, §3.2). With ``Δ_i = θ_i^bd − θ_i^clean`` the update of variant pair
``i`` and ``Δ_{i,j}`` its slice for component ``j``:

- poison strength ``s_j = mean_i ‖Δ_{i,j}‖₂``;
- cross-variant alignment ``a_j = mean_{i<l} max(0, cos(Δ_{i,j}, Δ_{l,j}))``;
- the score: ``sum`` (the paper's figure), ``s̃_j + λ·a_j``, with the strength min-max scaled to
  [0, 1] over the block's components of the family, the range of the alignment, so that ``λ``
  weighs two quantities of one scale (the scaling is ours: the paper does not say how it puts
  them on one scale); or ``product`` (its project page), ``s_j · a_j``, which needs no scaling.

The signature is the top ``share`` of components of each block, within each family. With one
variant there is no pair to align, and the score is the strength alone.

:func:`random_signature` draws the same share of components at random: a control, not the
method, that tells how much of a result the signature's choice accounts for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import torch

from ...errors import BackdoorLabError
from ...models.architecture import ArchitectureSpec
from .components import BlockTensors, component_vectors

SCORE_FORMS = ("sum", "product")


def strength_and_alignment(vectors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per component (rows of each ``[components, size]`` tensor, one per variant): the mean norm over
    variants, and the mean positive cosine over variant pairs (``None`` for a single variant)."""
    if not vectors:
        raise BackdoorLabError("the signature needs at least one variant")
    norms = torch.stack([v.norm(dim=1) for v in vectors])
    strength = norms.mean(0)
    if len(vectors) < 2:
        return strength, None
    cosines = [torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).clamp(min=0)
               for a, b in combinations(vectors, 2)]
    return strength, torch.stack(cosines).mean(0)


def combined_score(strength: torch.Tensor, alignment: torch.Tensor | None, form: str, lam: float) -> torch.Tensor:
    """The component score of one block and family (see the module docstring)."""
    if form not in SCORE_FORMS:
        raise BackdoorLabError(f"score must be one of {', '.join(SCORE_FORMS)}, got {form!r}")
    if alignment is None:
        return strength
    if form == "product":
        return strength * alignment
    low, high = strength.min(), strength.max()
    scaled = (strength - low) / (high - low) if high > low else torch.zeros_like(strength)
    return scaled + lam * alignment


def top_share(score: torch.Tensor, share: float) -> torch.Tensor:
    """The indices (ascending) of the highest-scoring ``share`` of components (none at share 0)."""
    if not 0 <= share <= 1:
        raise BackdoorLabError(f"the signature share must be in [0, 1], got {share}")
    count = round(share * score.numel())
    return torch.sort(torch.topk(score, count).indices).values if count else torch.zeros(0, dtype=torch.long)


@dataclass
class Signature:
    """Per family, per block: the chosen component indices, and summary scores for the record."""

    chosen: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    summary: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def count(self, family: str) -> int:
        return sum(int(c.numel()) for c in self.chosen.get(family, []))

    def to_dict(self) -> dict[str, object]:
        return {family: {"components": {str(b): c.tolist() for b, c in enumerate(blocks)},
                         "per_block": self.summary[family]} for family, blocks in self.chosen.items()}


def _summary(score: torch.Tensor, strength: torch.Tensor, alignment: torch.Tensor | None,
             chosen: torch.Tensor) -> dict[str, float]:
    rest = torch.ones_like(score, dtype=torch.bool)
    rest[chosen] = False

    def mean(values: torch.Tensor | None, mask: torch.Tensor) -> float | None:
        return None if values is None or not mask.any() else round(float(values[mask].mean()), 6)

    picked = ~rest
    return {"chosen": int(chosen.numel()), "strength_chosen": mean(strength, picked),
            "strength_rest": mean(strength, rest), "alignment_chosen": mean(alignment, picked),
            "alignment_rest": mean(alignment, rest)}


def random_signature(blocks: int, counts: dict[str, int], shares: dict[str, float], seed: int) -> Signature:
    """``shares`` of each family's ``counts`` components per block, drawn uniformly with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    signature = Signature()
    for family, share in shares.items():
        if share <= 0:
            continue
        signature.chosen[family], signature.summary[family] = [], []
        for _ in range(blocks):
            score = torch.rand(counts[family], generator=generator)
            chosen = top_share(score, share)
            signature.chosen[family].append(chosen)
            signature.summary[family].append({"chosen": int(chosen.numel())})
    return signature


def compute_signature(variant_block: Callable[[int, int], BlockTensors], variants: int, blocks: int,
                      spec: ArchitectureSpec, shares: dict[str, float], form: str = "sum",
                      lam: float = 1.0) -> Signature:
    """The signature over ``blocks`` blocks from ``variants`` updates; ``variant_block(i, b)`` gives
    variant ``i``'s update of block ``b`` (read lazily, one block at a time); ``shares`` gives each
    scored family's share of components (a family with share 0 is not scored)."""
    signature = Signature()
    families = [f for f, share in shares.items() if share > 0]
    for family in families:
        signature.chosen[family], signature.summary[family] = [], []
    for block in range(blocks):
        updates = [variant_block(i, block) for i in range(variants)]
        for family in families:
            vectors = [component_vectors(u, family, spec) for u in updates]
            strength, alignment = strength_and_alignment(vectors)
            score = combined_score(strength, alignment, form, lam)
            chosen = top_share(score, shares[family])
            signature.chosen[family].append(chosen)
            signature.summary[family].append(_summary(score, strength, alignment, chosen))
    return signature
