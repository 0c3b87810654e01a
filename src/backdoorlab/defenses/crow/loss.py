"""CROW's training objective: the LM loss plus FGSM-perturbed internal-consistency regularisation.

Min et al., "CROW: Eliminating Backdoors from Large Language Models via Internal Consistency
Regularization", ICML 2025 (arXiv 2411.12768), §3 and Algorithm 1. With ``H⁽⁰⁾`` the input
embeddings and ``H⁽ˡ⁾`` the output of transformer block ``l = 1..N``:

- layer consistency: ``L_cons⁽ˡ⁾ = 1/T Σ_t (1 − cos(H_t⁽ˡ⁾, H_t⁽ˡ⁻¹⁾))`` and
  ``L_cons = 1/(N−1) Σ_{l=2..N} L_cons⁽ˡ⁾``: the mean, over consecutive block outputs and tokens, of one
  minus their cosine similarity. The embeddings are not one of the pairs (the sum starts at ``l = 2``);
- adversarial perturbation (FGSM, one step): ``G = ∇_{H⁽⁰⁾} L_cons`` on the clean pass,
  ``H⁽⁰⁾_adv = H⁽⁰⁾ + ε · sign(G)``;
- adversarial consistency training: ``L_total = L_LM + α · L_cons^adv``, with ``L_LM`` the language
  modelling loss of the clean pass (here on response tokens, as the SFT does) and ``L_cons^adv`` the
  consistency of the perturbed pass. The clean pass's consistency only steers the perturbation.

Where this differs from the authors' code (github.com/NayMyatMin/CROW, ``consistency_trainer.py``):

- Block outputs are read by hooks at each block's output (the residual stream, before the final
  norm), giving the paper's ``N − 1`` pairs. The authors' code pairs Hugging Face's
  ``hidden_states[1:-1]``, whose last entry is the final block's output *after* the final norm, so
  it drops the last pair (``N − 2`` pairs; a 2-block model would have none).
- Padding is left out: the mean runs over non-padding tokens only and padding embeddings are not
  perturbed (the authors' code averages over every position of a right-padded batch).
- ``L_LM`` and the FGSM gradient come from one clean forward pass (the authors run a third forward
  pass for ``L_LM``); both use the same weights, so only dropout noise could differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ...errors import BackdoorLabError
from ...models.architecture import describe
from ...models.hooks import hooks
from ...models.victim import frozen_parameters


def consistency_loss(states: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """``L_cons``: the mean over consecutive pairs of ``states`` (each ``[batch, seq, hidden]``) and
    over the tokens where ``mask`` (``[batch, seq]``) is true of ``1 − cos(states[l], states[l+1])``."""
    if len(states) < 2:
        raise BackdoorLabError(f"layer consistency needs at least 2 block outputs, got {len(states)}")
    cosine = F.cosine_similarity(torch.stack(states[:-1]), torch.stack(states[1:]), dim=-1, eps=1e-8)
    return (1 - cosine)[:, mask.bool()].mean()  # [pairs, tokens] -> one mean; padding never enters


def fgsm_perturbation(loss: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``ε · sign(∇_embeds loss)`` on the non-padding positions (zero on padding), detached; the graph
    of ``loss`` is kept for a later backward pass."""
    (gradient,) = torch.autograd.grad(loss, embeds, retain_graph=True)
    return (epsilon * gradient.sign() * mask.unsqueeze(-1).to(gradient.dtype)).detach()


@contextmanager
def recorded_block_outputs(model: Any) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, every forward pass of ``model`` fills the yielded dict with each transformer
    block's output (``{layer: [batch, seq, hidden]}``, still in the autograd graph)."""
    inner = getattr(model, "module", model)  # a distributed wrapper's model
    spec = describe(inner)
    outputs: dict[int, torch.Tensor] = {}

    def keep(layer: int):  # type: ignore[no-untyped-def]
        def fn(state: torch.Tensor) -> None:
            outputs[layer] = state
        return fn

    with hooks(inner, spec, {(layer, "resid_post"): keep(layer) for layer in range(spec.num_layers)}):
        yield outputs


@dataclass(frozen=True)
class CrowTerms:
    """The parts of one batch's CROW loss."""

    lm: torch.Tensor  # L_LM of the clean pass (in the graph)
    clean: torch.Tensor  # L_cons of the clean pass (detached)
    perturbed: torch.Tensor  # L_cons^adv of the FGSM-perturbed pass (in the graph)
    perturbation: torch.Tensor  # ε · sign(∇ L_cons) added to the input embeddings


@dataclass
class CrowObjective:
    """CROW as a :class:`~backdoorlab.training.TrainingObjective`: ``L_LM + α · L_cons^adv``.

    ``history`` keeps each training batch's terms (``lm``, ``consistency``, ``perturbed_consistency``)."""

    name: ClassVar[str] = "crow"
    epsilon: float = 0.1
    alpha: float = 5.5
    history: list[dict[str, float]] = field(default_factory=list, repr=False, compare=False)

    def settings(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "alpha": self.alpha, "pairs": "consecutive block outputs"}

    def terms(self, model: Any, inputs: Mapping[str, torch.Tensor], train: bool = True) -> CrowTerms:
        """One batch's terms: a clean pass (``L_LM`` and ``L_cons``), the FGSM step on the input
        embeddings, and a pass on the perturbed embeddings (``L_cons^adv``). With ``train=False``
        the perturbed pass keeps no autograd graph (for measuring)."""
        mask = inputs["attention_mask"]
        embeds = getattr(model, "module", model).get_input_embeddings()(inputs["input_ids"])
        if not embeds.requires_grad:  # a frozen embedding table: the embeddings are a leaf
            embeds.requires_grad_(True)
        clean_out, clean_states = self._forward(model, embeds, inputs, with_labels=True)
        clean = consistency_loss(clean_states, mask)
        delta = fgsm_perturbation(clean, embeds, mask, self.epsilon)
        with torch.set_grad_enabled(train):
            _, perturbed_states = self._forward(model, embeds + delta, inputs, with_labels=False)
        return CrowTerms(clean_out.loss, clean.detach(), consistency_loss(perturbed_states, mask), delta)

    def loss(self, model: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        terms = self.terms(model, inputs)
        self.history.append(_values(terms))
        return terms.lm + self.alpha * terms.perturbed

    def measure(self, model: Any, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """The mean terms over ``batches`` in eval mode, leaving the weights untouched (the FGSM step
        still takes its gradient with respect to the embeddings)."""
        model.eval()
        with frozen_parameters(model), torch.enable_grad():
            rows = [_values(self.terms(model, batch, train=False)) for batch in batches]
        return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]} if rows else {}

    @staticmethod
    def _forward(model: Any, embeds: torch.Tensor, inputs: Mapping[str, torch.Tensor],
                 with_labels: bool) -> tuple[Any, list[torch.Tensor]]:
        extra = {"position_ids": inputs["position_ids"]} if "position_ids" in inputs else {}
        if with_labels:
            extra["labels"] = inputs["labels"]
        with recorded_block_outputs(model) as outputs:
            result = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], use_cache=False, **extra)
        return result, [outputs[layer] for layer in sorted(outputs)]


def _values(terms: CrowTerms) -> dict[str, float]:
    return {"lm": terms.lm.item(), "consistency": terms.clean.item(), "perturbed_consistency": terms.perturbed.item()}
