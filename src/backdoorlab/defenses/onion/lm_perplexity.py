"""Perplexity of plain texts under a causal LM, batched (the fluency score ONION uses).

A text is scored as it is, never wrapped in a chat template: its tokens, preceded by the
tokenizer's BOS token when it has one, so that the first word is predicted too. Perplexity is
``exp`` of the mean token negative log-likelihood over the predicted tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import BackdoorLabError
from ...models.tokenization import pad_batch
from ...models.victim import Victim, batched


class PerplexityScorer:
    """Callable ``scorer(texts, batch_size) -> perplexities [N]`` over a generator :class:`Victim`.

    A text with no token to predict (empty, or one token and no BOS) gets ``nan``.
    """

    def __init__(self, lm: Victim) -> None:
        if not lm.is_generator:
            raise BackdoorLabError(f"perplexity needs a causal LM; {lm.name or 'this model'} is a {lm.kind}")
        self.lm = lm

    @classmethod
    def load(cls, name: str, device: str | None = "auto") -> "PerplexityScorer":
        from ...models.loading import load_victim

        return cls(load_victim(name, kind="generator", device=device))

    def token_ids(self, text: str) -> list[int]:
        """``[BOS] + tokens`` (BOS only when the tokenizer has one), cut to the LM's ``max_length``."""
        tokenizer = self.lm.tokenizer
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return (bos + tokenizer(text, add_special_tokens=False)["input_ids"])[:self.lm.max_length]

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        self.lm.model.eval()
        pad = self.lm.tokenizer.pad_token_id
        results = []
        for chunk in batched(list(texts), batch_size, "perplexity"):
            features = []
            for text in chunk:
                ids = self.token_ids(text) or [pad]  # an empty text without BOS: one dummy token, no target
                features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
            batch = {k: v.to(self.lm.device) for k, v in pad_batch(features, pad, side="right").items()}
            logits = self.lm.forward(batch).logits[:, :-1].float()
            targets = batch["input_ids"][:, 1:]
            mask = batch["attention_mask"][:, 1:].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            mean = (nll * mask).sum(-1) / mask.sum(-1)  # 0/0 = nan for rows with no predicted token
            results.append(mean.exp().cpu())
        return torch.cat(results) if results else torch.empty(0)
