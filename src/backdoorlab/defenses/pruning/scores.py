"""Masks from weight scores, shared by Wanda and magnitude pruning.

A score matrix has the weight's shape ``[out_features, in_features]``; a mask marks the weights to
zero (``True`` = pruned). Weights are compared within a *comparison group* (Wanda paper,
arXiv 2306.11695, §3 and §4.3): one output row (Wanda's per-output comparison) or the whole layer
(the layer-wise threshold of magnitude pruning, Han et al. 2015). An N:M pattern zeroes the N
lowest-scoring of every M consecutive input weights of each row (semi-structured sparsity, §4.2).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ...errors import BackdoorLabError

UNSTRUCTURED = "unstructured"
GROUPS = ("row", "layer")
NM = tuple[int, int]


def parse_pattern(pattern: str) -> NM | None:
    """``None`` for ``"unstructured"``, else ``(N, M)`` of an ``"N:M"`` pattern with ``0 < N < M``."""
    if pattern == UNSTRUCTURED:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
    if match is None:
        raise BackdoorLabError(f"pattern must be {UNSTRUCTURED!r} or 'N:M' (e.g. '2:4', '4:8'), got {pattern!r}")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        raise BackdoorLabError(f"pattern {pattern!r}: an N:M pattern zeroes N of every M weights, so it needs 0 < N < M")
    return n, m


def target_sparsity(sparsity: float | None, pattern: str) -> float:
    """The share of weights to zero: ``sparsity`` (default 0.5) unstructured, N/M for an N:M pattern."""
    nm = parse_pattern(pattern)
    if sparsity is not None and not 0 < sparsity < 1:
        raise BackdoorLabError(f"sparsity must be strictly between 0 and 1, got {sparsity}")
    if nm is None:
        return 0.5 if sparsity is None else sparsity
    n, m = nm
    if sparsity is not None and abs(sparsity - n / m) > 1e-9:
        raise BackdoorLabError(f"pattern {pattern!r} zeroes {n} of every {m} weights, a sparsity of {n / m:g}; leave "
                               f"sparsity unset or set it to {n / m:g} (got {sparsity})")
    return n / m


def check_widths(linears: Iterable[tuple[str, nn.Linear]], pattern: str) -> None:
    """Raise unless ``pattern``'s M divides every layer's input width (an N:M group never straddles rows)."""
    nm = parse_pattern(pattern)
    if nm is None:
        return
    bad = sorted({f"{name} ({linear.in_features})" for name, linear in linears if linear.in_features % nm[1]})
    if bad:
        raise BackdoorLabError(f"pattern {pattern!r} needs input widths divisible by {nm[1]}; these are not: "
                               f"{', '.join(bad[:6])}")


def prune_mask(scores: torch.Tensor, sparsity: float, pattern: str = UNSTRUCTURED, group: str = "row") -> torch.Tensor:
    """The weights to zero (``True``) given their ``scores`` (lowest pruned first).

    Unstructured: ``floor(sparsity × width)`` weights of each row (``group="row"``) or
    ``floor(sparsity × size)`` of the layer (``group="layer"``). N:M: the N lowest of every M
    consecutive weights of each row (``sparsity`` must then be N/M; ``group`` is ignored).
    Ties are broken by position (stable sort).
    """
    if scores.dim() != 2:
        raise BackdoorLabError(f"scores must be a matrix [out, in], got shape {tuple(scores.shape)}")
    if group not in GROUPS:
        raise BackdoorLabError(f"comparison group must be one of {GROUPS}, got {group!r}")
    rows, width = scores.shape
    nm = parse_pattern(pattern)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        if width % m:
            raise BackdoorLabError(f"pattern {pattern!r} needs an input width divisible by {m}, got {width}")
        grouped = scores.reshape(rows, width // m, m)
        lowest = grouped.argsort(dim=-1, stable=True)[..., :n]
        return mask.reshape(rows, width // m, m).scatter_(-1, lowest, True).reshape(rows, width)
    if group == "row":
        lowest = scores.argsort(dim=1, stable=True)[:, :int(width * sparsity)]
        return mask.scatter_(1, lowest, True)
    lowest = scores.flatten().argsort(stable=True)[:int(scores.numel() * sparsity)]
    mask.view(-1)[lowest] = True
    return mask


@torch.no_grad()
def apply_mask(linear: nn.Linear, mask: torch.Tensor) -> int:
    """Zero ``linear``'s weights where ``mask`` is ``True``, in place; returns how many were zeroed."""
    if mask.shape != linear.weight.shape:
        raise BackdoorLabError(f"mask shape {tuple(mask.shape)} does not match weight {tuple(linear.weight.shape)}")
    linear.weight.masked_fill_(mask.to(linear.weight.device), 0)
    return int(mask.sum())


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every linear layer inside one transformer block, by its name within the block
    (``self_attn.q_proj`` … ``mlp.down_proj`` in decoders); embeddings and heads are outside blocks."""
    return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


def sparsity_report(layers: Mapping[str, nn.Linear]) -> dict[str, object]:
    """Realised sparsity (share of zero weights) overall and per layer type (the name within its block).

    ``layers`` maps ``"<block index>.<name within block>"`` to the linear layer.
    """
    zeros: dict[str, int] = defaultdict(int)
    sizes: dict[str, int] = defaultdict(int)
    for key, linear in layers.items():
        kind = key.split(".", 1)[1]
        zeros[kind] += int((linear.weight == 0).sum())
        sizes[kind] += linear.weight.numel()
    total_zeros, total = sum(zeros.values()), sum(sizes.values())
    return {"sparsity": total_zeros / total if total else 0.0,
            "sparsity_by_type": {kind: zeros[kind] / sizes[kind] for kind in sorted(sizes)},
            "zero_weights": total_zeros, "weights": total}
