"""Tokenization shared by training and scoring, so both see identical token sequences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data.prompts import prompt_token_ids, render_training_pair
from ..data.records import Example

IGNORE_INDEX = -100


def tokenize_pair(tokenizer: Any, example: Example, max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids of prompt + completion, with ``labels`` masked (-100) on the prompt.

    Prompt and completion are tokenized separately and concatenated, so the boundary never
    depends on how the tokenizer would merge across it. When ``max_length`` is exceeded the
    completion is cut first, so training sees the same prompt as evaluation; only when the prompt
    alone leaves less than a quarter of ``max_length`` for the completion is the prompt cut from
    the left, keeping its end.
    """
    prompt, completion = render_training_pair(example, tokenizer)
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if max_length is not None and len(prompt_ids) + len(completion_ids) > max_length:
        kept = max(max_length - len(prompt_ids), min(len(completion_ids), max(1, max_length // 4)))
        completion_ids = completion_ids[:kept]
        prompt_ids = prompt_ids[-(max_length - len(completion_ids)):]
    ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def pad_batch(features: Sequence[dict[str, list[int]]], pad_id: int, side: str = "left") -> dict[str, torch.Tensor]:
    """Pad token lists to one length; pads get attention 0 and label -100.

    Decoders are padded on the left so the last prompt token sits at index -1 of every row;
    ``position_ids`` count real tokens only, so padding never shifts positions.
    """
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, list[list[int]]] = {k: [] for k in features[0]}
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    for feature in features:
        gap = width - len(feature["input_ids"])
        for key, values in feature.items():
            pad = [fill.get(key, 0)] * gap
            batch[key].append(pad + list(values) if side == "left" else list(values) + pad)
    tensors = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    tensors["position_ids"] = (tensors["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return tensors
