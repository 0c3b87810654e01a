"""CleanGen's decoding rule (Li et al., "CleanGen: Mitigating Backdoor Attacks for Generation Tasks
in Large Language Models", EMNLP 2024, §4, Algorithm 1).

The suspect proposes its greedy token ``x_t``; the reference model scores it. ``x_t`` is suspicious
when its suspicion score ``β_t = P_suspect(x_t | x_<t) / P_reference(x_t | x_<t)`` reaches ``α``
(§4.2, Eq. 3): a backdoor raises the probability of its target tokens far above what a clean model
gives them. A suspicious token is replaced by the reference's most probable token (§4.3).

The paper drafts ``k`` tokens with the suspect and has the reference verify them in one pass,
discarding the drafts after a replacement. Each decision depends only on the prefix, and a
discarded draft is redrafted greedily from the same prefix, so the output is the same for every
``k``: ``k`` only trades reference calls for wasted drafts. Here both models decode step by step
with their key-value caches (two cached decoding steps per token, every row of a batch at once),
which gives exactly the paper's output for any ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...data.records import Example
from ...errors import BackdoorLabError
from ...models.victim import Victim, batched


@dataclass
class CleanGenCounts:
    """Tokens the suspect drafted, the tokens kept, and the tokens the reference replaced."""

    drafted: int = 0
    kept: int = 0
    replaced: int = 0
    rows: int = 0

    def add(self, other: "CleanGenCounts") -> None:
        self.drafted += other.drafted
        self.kept += other.kept
        self.replaced += other.replaced
        self.rows += other.rows

    def as_dict(self) -> dict[str, float | int]:
        produced = self.kept + self.replaced
        return {"rows": self.rows, "drafted_tokens": self.drafted, "kept_tokens": self.kept,
                "replaced_tokens": self.replaced, "replaced_share": self.replaced / produced if produced else 0.0}


def end_token_ids(victim: Victim) -> set[int]:
    """The token ids that end a response (the generation config's, else the tokenizer's end of sequence)."""
    configured = getattr(getattr(victim.model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, (list, tuple)) else [configured]
    ends = {int(i) for i in ids if i is not None}
    if victim.tokenizer.eos_token_id is not None:
        ends.add(int(victim.tokenizer.eos_token_id))
    return ends


def check_same_vocabulary(suspect: Victim, reference: Victim) -> None:
    """CleanGen compares the two models token by token: they must share a tokenizer."""
    if not reference.is_generator:
        raise BackdoorLabError("CleanGen's reference model must be a generator (a causal LM)")
    if suspect.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
        raise BackdoorLabError("CleanGen's reference model must use the suspect's tokenizer (the same vocabulary); "
                               "pick a clean model of the same family")


@torch.inference_mode()
def cleangen_generate(suspect: Victim, reference: Victim, items: Sequence[Example | str], *,
                      max_new_tokens: int = 64, alpha: float = 20.0,
                      batch_size: int = 16) -> tuple[list[str], CleanGenCounts]:
    """Each prompt's response decoded by CleanGen, and how many tokens the reference replaced."""
    check_same_vocabulary(suspect, reference)
    suspect.model.eval()
    reference.model.eval()
    counts = CleanGenCounts()
    outputs: list[str] = []
    for chunk in batched(list(items), batch_size, "CleanGen decoding"):
        batch = suspect.encode(chunk)
        responses, chunk_counts = _decode_batch(suspect, reference, batch, max_new_tokens, alpha)
        counts.add(chunk_counts)
        outputs.extend(suspect.tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses)
    return outputs, counts


def _decode_batch(suspect: Victim, reference: Victim, batch: dict[str, torch.Tensor], max_new_tokens: int,
                  alpha: float) -> tuple[list[list[int]], CleanGenCounts]:
    """Decode a left-padded prompt batch (with ``position_ids``) token by token through both models."""
    ends = torch.tensor(sorted(end_token_ids(suspect)), device=suspect.device)
    rows = batch["input_ids"].shape[0]
    counts = CleanGenCounts(rows=rows)
    mask, positions = batch["attention_mask"], batch["position_ids"]
    step_inputs = batch["input_ids"]
    caches: dict[str, object | None] = {"suspect": None, "reference": None}
    responses: list[list[int]] = [[] for _ in range(rows)]
    running = torch.ones(rows, dtype=torch.bool, device=suspect.device)
    for _ in range(max_new_tokens):
        suspect_logits = _step(suspect, "suspect", caches, step_inputs, mask, positions)
        reference_logits = _step(reference, "reference", caches, step_inputs, mask, positions).to(suspect.device)
        proposed = suspect_logits.argmax(-1)
        suspect_prob = torch.softmax(suspect_logits, -1).gather(-1, proposed[:, None]).squeeze(-1)
        reference_prob = torch.softmax(reference_logits, -1).gather(-1, proposed[:, None]).squeeze(-1)
        suspicious = suspect_prob >= alpha * reference_prob  # β_t ≥ α, without dividing by a tiny probability
        chosen = torch.where(suspicious, reference_logits.argmax(-1), proposed)
        counts.replaced += int((suspicious & running).sum())
        counts.kept += int((~suspicious & running).sum())
        for row in running.nonzero().flatten().tolist():
            responses[row].append(int(chosen[row]))
        running &= ~torch.isin(chosen, ends)
        if not bool(running.any()):
            break
        step_inputs = chosen[:, None]
        mask = torch.cat([mask, torch.ones_like(step_inputs)], dim=1)
        positions = positions[:, -1:] + 1
    counts.drafted = counts.kept + counts.replaced
    return responses, counts


def _step(victim: Victim, name: str, caches: dict[str, object | None], inputs: torch.Tensor, mask: torch.Tensor,
          positions: torch.Tensor) -> torch.Tensor:
    """One cached forward pass of ``victim``; the float logits of the next token, per row."""
    device = victim.device
    out = victim.model(input_ids=inputs.to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device), past_key_values=caches[name], use_cache=True)
    caches[name] = out.past_key_values
    return out.logits[:, -1].float()
