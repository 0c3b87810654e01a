"""The trigger search shared by the classifier and generator scans: every allowed word (or a seeded
sample of ``max_words`` of them) tried alone on one row, the best ``shortlist`` on ``screen_rows``
rows (a first-order ranking misses words whose embedding training moved far), then longer phrases
by the gradient search (:func:`~backdoorlab.scan.hotflip.hotflip_search`) from the best word and
random words. Trigger lengths count tokens; with ``word_pieces`` the gradient search may also put
word pieces after the first token, so that a trigger word the tokenizer splits (``bram ##ble``) can be
reached.

The caller supplies the loss: ``make_loss(rows)`` returns a :class:`TriggerLoss` over those rows
(lower is better: the label's cross-entropy, the behaviour opening's negative log-likelihood)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from .hotflip import hotflip_search
from .settings import ScanSettings
from .vocabulary import continuation_pieces, phrase_of

#: Words scored per forward batch while screening the vocabulary.
SCREEN_BATCH = 256


class TriggerLoss(Protocol):
    """A loss over triggers of token ids, inserted into fixed rows."""

    embeddings: torch.Tensor  # the model's input embedding matrix [vocab, hidden]

    def __call__(self, triggers: torch.Tensor) -> torch.Tensor:
        """Mean loss per trigger (``triggers``: ``[n, length]``)."""
        ...

    def gradient(self, trigger: torch.Tensor) -> torch.Tensor:
        """d loss / d (the trigger's input embeddings), ``[length, hidden]``."""
        ...


def search_phrases(tokenizer: Any, device: torch.device, rows: Sequence[Any], allowed: list[int],
                   make_loss: Callable[[Sequence[Any]], TriggerLoss], settings: ScanSettings,
                   what: str, key: str, cased: bool = False,
                   make_first_screen_loss: Callable[[Sequence[Any]], TriggerLoss] | None = None) -> list[str]:
    """One phrase per trigger length in ``settings.lengths`` (module docstring). ``what`` names the
    target in progress bars; ``key`` seeds the random start words; ``cased``: the vocabulary keeps
    case and digits (:func:`~backdoorlab.scan.vocabulary.continuation_pieces`);
    ``make_first_screen_loss``: a cheaper loss for trying every word on one row (default ``make_loss``)."""
    pieces = continuation_pieces(tokenizer, cased) if settings.word_pieces else []
    if settings.max_words is not None and len(allowed) > settings.max_words:
        allowed = sorted(random.Random(f"scan-words-{settings.seed}-{key}").sample(allowed, int(settings.max_words)))
    loss = make_loss(rows)
    words = torch.tensor(allowed, dtype=torch.long, device=device)
    first = make_first_screen_loss or make_loss
    for screen_rows, keep, make in ((1, settings.shortlist, first), (settings.screen_rows, 1, make_loss)):
        screen = make(rows[:screen_rows])
        losses = torch.cat([screen(words[i:i + SCREEN_BATCH].unsqueeze(1)) for i in
                            tqdm(range(0, len(words), SCREEN_BATCH), desc=f"screening words for {what}", leave=False)])
        words = words[losses.argsort()[:keep]]
    best_word = int(words[0])
    phrases = []
    for length in settings.lengths:
        if length == 1:
            ids = [best_word]
        else:
            rng = random.Random(f"scan-start-{settings.seed}-{key}-{length}")
            start = [best_word] + rng.sample(allowed, length - 1)
            with torch.enable_grad():
                ids = hotflip_search(loss, loss.gradient, loss.embeddings, allowed, start, steps=settings.steps,
                                     top_k=settings.top_k, continuations=pieces).ids
        phrases.append(phrase_of(tokenizer, ids, set(pieces)))
    return phrases
