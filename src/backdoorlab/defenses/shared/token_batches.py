"""The defender's clean rows as padded token batches, tokenized exactly as for training."""

from __future__ import annotations

import torch

from ...data.records import Dataset
from ...models.victim import Victim, batched
from ...training import training_collator, training_features

Batch = dict[str, torch.Tensor]


def token_batches(victim: Victim, rows: Dataset, batch_size: int, max_length: int | None = None, *,
                  sort: bool = True, desc: str = "tokenizing") -> list[Batch]:
    """``rows`` tokenized as for training (:func:`~backdoorlab.training.training_features`: prompt +
    response for generators, truncated to ``max_length``, default the victim's own), padded into
    batches on the victim's device; ``sort`` groups rows of similar length first (less padding)."""
    features = training_features(victim, rows, max_length or victim.max_length)
    if sort:
        features.sort(key=lambda f: len(f["input_ids"]))
    collate = training_collator(victim)
    return [{k: v.to(victim.device) for k, v in collate(list(chunk)).items()}
            for chunk in batched(features, batch_size, desc)]


def real_tokens(batch: Batch) -> torch.Tensor:
    """``[batch, seq]`` booleans: the tokens that are not padding."""
    return batch["attention_mask"].bool()
