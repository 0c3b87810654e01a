"""CleanGen's decoding loop (Li et al., "CleanGen: Mitigating Backdoor Attacks for Generation Tasks
in Large Language Models", EMNLP 2024, §4, Algorithm 1).

The suspect drafts ``k`` tokens greedily; the reference model scores the same tokens in one pass.
Draft token ``x_t`` is suspicious when its suspicion score ``β_t = P_suspect(x_t | x_<t) /
P_reference(x_t | x_<t)`` reaches ``α`` (§4.2, Eq. 3): a backdoor raises the probability of its
target tokens far above what a clean model gives them. The first suspicious token is replaced by
the reference's most probable token at that position and the drafted tokens after it are
discarded; the next draft starts after the replacement (§4.3). With no suspicious token the whole
draft is kept. Rows of a batch advance independently: each keeps its own prefix and is re-padded
(on the left) for every draft.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...data.prompts import prompt_token_ids
from ...data.records import Example
from ...errors import BackdoorLabError
from ...models.tokenization import pad_batch
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
                      max_new_tokens: int = 64, alpha: float = 20.0, k: int = 4,
                      batch_size: int = 16) -> tuple[list[str], CleanGenCounts]:
    """Each prompt's response decoded by CleanGen, and what the reference replaced."""
    check_same_vocabulary(suspect, reference)
    suspect.model.eval()
    reference.model.eval()
    counts = CleanGenCounts()
    prompts = [prompt_token_ids(suspect.tokenizer, text)[-suspect.max_length:] for text in suspect.prompts(items)]
    outputs: list[str] = []
    for chunk in batched(prompts, batch_size, "CleanGen decoding"):
        responses, chunk_counts = _decode_chunk(suspect, reference, list(chunk), max_new_tokens, alpha, k)
        counts.add(chunk_counts)
        outputs.extend(suspect.tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses)
    return outputs, counts


def _decode_chunk(suspect: Victim, reference: Victim, prompts: list[list[int]], max_new_tokens: int,
                  alpha: float, k: int) -> tuple[list[list[int]], CleanGenCounts]:
    ends = end_token_ids(suspect)
    pad = suspect.tokenizer.pad_token_id
    responses: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    counts = CleanGenCounts(rows=len(prompts))
    while active:
        steps = min(k, max_new_tokens - min(len(responses[i]) for i in active))
        batch = pad_batch([{"input_ids": prompts[i] + responses[i], "attention_mask": [1] * (len(prompts[i]) +
                                                                                           len(responses[i]))}
                           for i in active], pad)
        batch = {key: value.to(suspect.device) for key, value in batch.items()}
        draft, suspect_probs = _draft(suspect, batch, steps, pad)
        reference_probs, reference_choice = _score(reference, batch, draft)
        still_active = []
        for row, index in enumerate(active):
            room = max_new_tokens - len(responses[index])
            accepted, replaced, ended = _accept(draft[row, :room].tolist(), suspect_probs[row, :room],
                                                reference_probs[row, :room], reference_choice[row, :room], alpha, ends)
            counts.drafted += min(room, steps)
            counts.kept += len(accepted) - replaced
            counts.replaced += replaced
            responses[index].extend(accepted)
            if not ended and len(responses[index]) < max_new_tokens:
                still_active.append(index)
        active = still_active
    return responses, counts


def _draft(suspect: Victim, batch: dict[str, torch.Tensor], steps: int,
           pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``steps`` greedy tokens per row (fewer when every row ended; a row that ended is padded) and
    the suspect's probability of each."""
    out = suspect.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 max_new_tokens=steps, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=pad, output_logits=True,
                                 return_dict_in_generate=True)
    draft = out.sequences[:, batch["input_ids"].shape[1]:]
    logits = torch.stack(out.logits, dim=1).float()
    probs = torch.softmax(logits, -1).gather(-1, draft.unsqueeze(-1)).squeeze(-1)
    return draft, probs


def _score(reference: Victim, batch: dict[str, torch.Tensor], draft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's probability of each draft token, and its own choice at each draft position."""
    ids = torch.cat([batch["input_ids"], draft.to(batch["input_ids"].device)], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(draft)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = reference.device
    logits = reference.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                             position_ids=positions.to(device)).logits.float()
    width, steps = batch["input_ids"].shape[1], draft.shape[1]
    predicting = logits[:, width - 1:width - 1 + steps]  # position t predicts draft token t
    probs = torch.softmax(predicting, -1).gather(-1, draft.to(device).unsqueeze(-1)).squeeze(-1)
    return probs.to(draft.device), predicting.argmax(-1).to(draft.device)


def _accept(draft: list[int], suspect_probs: torch.Tensor, reference_probs: torch.Tensor,
            reference_choice: torch.Tensor, alpha: float, ends: set[int]) -> tuple[list[int], int, bool]:
    """The draft tokens kept up to the first suspicious one (replaced by the reference's choice), how many
    were replaced (0 or 1), and whether the response ended."""
    accepted: list[int] = []
    for position, token in enumerate(draft):
        score = float(suspect_probs[position]) / max(float(reference_probs[position]), 1e-30)
        if score >= alpha:
            choice = int(reference_choice[position])
            accepted.append(choice)
            return accepted, 1, choice in ends
        accepted.append(token)
        if token in ends:
            return accepted, 0, True
    return accepted, 0, False
