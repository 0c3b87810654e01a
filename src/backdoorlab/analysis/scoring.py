"""P(backdoor output | prompt) under many interventions, computed cheaply.

Attribution needs the probability of the backdoor target ``y_bd`` once per intervention (one per
attention head for exact ACIE, 270 on SmolLM2, 1,024 on a 7B Llama). For a causal decoder an
intervention at the last prompt token cannot change anything before it, so the prompt minus its
last token is run **once** with a key/value cache and each intervention only re-runs the last
prompt token plus the target tokens. Prompts are left-padded and targets right-padded so that
the last prompt token sits in the same column of every row.

For classifiers the probability is that of the target label (the study's classification
variant), with interventions at ``[CLS]``; there is no cache (encoders attend both ways).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..data.prompts import prompt_token_ids, render_training_pair
from ..data.records import Example
from ..errors import BackdoorLabError
from ..models.interventions import Intervention
from ..models.victim import Victim, batched


@dataclass
class _CachedBatch:
    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    target_mask: torch.Tensor  # [B, R] real target tokens
    prompt_width: int  # P
    cache: object | None = None


class BackdoorScorer:
    """Scores a fixed set of prompts against their backdoor targets, with any intervention.

    ``score(intervention)`` returns one value per prompt: the geometric mean of the target's token
    probabilities (generators; the first ``max_target_tokens`` tokens when set) or the target
    label's probability (classifiers). With
    ``with_grad=True`` the caller gets a differentiable tensor (for attribution patching).
    """

    def __init__(self, victim: Victim, prompts: Sequence[Example], targets: Sequence[str] | None = None,
                 target_label: int | None = None, batch_size: int = 16, use_cache: bool = True,
                 max_target_tokens: int | None = None) -> None:
        if victim.is_generator and (targets is None or len(targets) != len(prompts)):
            raise BackdoorLabError("a generator needs one target response per prompt")
        if not victim.is_generator and target_label is None:
            raise BackdoorLabError("a classifier needs a target label")
        self.victim = victim
        self.prompts = list(prompts)
        self.targets = list(targets) if targets is not None else None
        self.target_label = target_label
        self.batch_size = batch_size
        self.use_cache = use_cache and victim.is_generator
        self.max_target_tokens = max_target_tokens or victim.max_length
        self._batches: list[_CachedBatch] | None = None

    # ------------------------------------------------------------------ public
    def score(self, intervention: Intervention | None = None, with_grad: bool = False) -> torch.Tensor:
        """``P(y_bd | x_i)`` for every prompt under ``intervention`` (a 1-D tensor)."""
        if not self.victim.is_generator:
            return self._label_scores(intervention, with_grad)
        context = torch.enable_grad() if with_grad else torch.inference_mode()
        self.victim.model.eval()
        with context:
            return torch.cat([self._batch_scores(b, intervention, with_grad) for b in self._prepared(with_grad)])

    # --------------------------------------------------------------- classifier
    def _label_scores(self, intervention: Intervention | None, with_grad: bool) -> torch.Tensor:
        if not with_grad:
            return self.victim.label_probs(self.prompts, self.batch_size, intervention)[:, self.target_label]
        self.victim.model.eval()
        scores = []
        with torch.enable_grad():
            for chunk in batched(self.prompts, self.batch_size, "scoring"):
                batch = self.victim.encode(chunk)
                with self.victim.intervening(intervention, self.victim.readout_positions(batch)):
                    logits = self.victim.forward(batch).logits.float()
                scores.append(torch.softmax(logits, -1)[:, self.target_label])
        return torch.cat(scores)

    # ---------------------------------------------------------------- generator
    def _prepared(self, with_grad: bool) -> list[_CachedBatch]:
        if self._batches is None:
            self._batches = [self._build(list(range(s, min(s + self.batch_size, len(self.prompts)))))
                             for s in range(0, len(self.prompts), self.batch_size)]
        if self.use_cache and not with_grad:
            for batch in self._batches:
                if batch.cache is None:
                    batch.cache = self._prefix_cache(batch)
        return self._batches

    def _build(self, rows: list[int]) -> _CachedBatch:
        tokenizer = self.victim.tokenizer
        prompts, targets = [], []
        for i in rows:
            example = self.prompts[i].with_(response=self.targets[i])
            prompt_text, completion = render_training_pair(example, tokenizer)
            prompts.append(prompt_token_ids(tokenizer, prompt_text)[-self.victim.max_length:])
            targets.append(tokenizer(completion, add_special_tokens=False)["input_ids"][:self.max_target_tokens])
        if any(len(t) == 0 for t in targets):
            raise BackdoorLabError("a backdoor target response is empty; give each prompt a non-empty target")
        width, length = max(map(len, prompts)), max(map(len, targets))
        pad = tokenizer.pad_token_id
        ids, mask, target_mask = [], [], []
        for p, t in zip(prompts, targets):
            ids.append([pad] * (width - len(p)) + p + t + [pad] * (length - len(t)))
            mask.append([0] * (width - len(p)) + [1] * (len(p) + len(t)) + [0] * (length - len(t)))
            target_mask.append([1] * len(t) + [0] * (length - len(t)))
        device = self.victim.device
        attention = torch.tensor(mask, device=device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return _CachedBatch(torch.tensor(ids, device=device), attention, positions,
                            torch.tensor(target_mask, device=device, dtype=torch.bool), width)

    def _prefix_cache(self, batch: _CachedBatch) -> object | None:
        head = batch.prompt_width - 1
        if head < 1:
            return None
        with torch.inference_mode():
            out = self.victim.model(input_ids=batch.input_ids[:, :head], attention_mask=batch.attention_mask[:, :head],
                                    position_ids=batch.position_ids[:, :head], use_cache=True)
        return out.past_key_values

    def _batch_scores(self, batch: _CachedBatch, intervention: Intervention | None, with_grad: bool) -> torch.Tensor:
        width = batch.prompt_width
        use_cache = batch.cache is not None and not with_grad
        start = width - 1 if use_cache else 0
        positions = torch.full((batch.input_ids.shape[0],), width - 1 - start, dtype=torch.long)
        with self.victim.intervening(intervention, positions), self._restored(batch.cache if use_cache else None):
            logits = self.victim.model(
                input_ids=batch.input_ids[:, start:], attention_mask=batch.attention_mask,
                position_ids=batch.position_ids[:, start:], past_key_values=batch.cache if use_cache else None,
                use_cache=use_cache).logits
        # logits at column c predict token c + 1; the targets occupy columns width .. width + R - 1
        predicting = logits[:, width - 1 - start: logits.shape[1] - 1].float()
        targets = batch.input_ids[:, width:]
        logprobs = torch.log_softmax(predicting, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        mask = batch.target_mask.float()
        values = ((logprobs * mask).sum(-1) / mask.sum(-1)).exp()
        return values if with_grad else values.cpu()

    @staticmethod
    @contextmanager
    def _restored(cache: object | None) -> Iterator[None]:
        """Crop the cache back to the prompt prefix after a forward pass extended it."""
        if cache is None:
            yield
            return
        length = cache.get_seq_length()
        try:
            yield
        finally:
            extra = cache.get_seq_length() - length
            if extra > 0:
                try:  # transformers >= 5: a negative count of tokens to drop
                    cache.crop(-extra)
                except ValueError:  # older releases: the length to keep
                    cache.crop(length)
            if cache.get_seq_length() != length:
                raise BackdoorLabError("could not restore the prompt key/value cache; use use_cache=False")
