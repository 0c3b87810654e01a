"""``Victim``: one interface over classifiers and causal LMs for scoring, generation and internals.

Everything downstream (evaluation, analyses, defenses) talks to models through this class, so a
method written against it runs unchanged on a 135M model on a laptop CPU or a 7B model on a GPU.
Inputs are :class:`~backdoorlab.data.records.Example` rows or plain strings (a classifier's text;
a generator's user message). Generator prompts are always rendered with the one shared prompt
format (:mod:`backdoorlab.data.prompts`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.prompts import classifier_text, prompt_token_ids, render_prompt
from ..data.records import Example
from ..errors import BackdoorLabError
from ..fileio import atomic_directory, write_json_atomic
from .architecture import ArchitectureSpec, base_model, describe
from .hooks import HookFn, HookKey, hooks
from .interventions import Intervention, acts_every_pass, first_call_only
from .tokenization import IGNORE_INDEX, pad_batch, tokenize_pair

Item = Example | str
VICTIM_FILE = "victim.json"


def as_example(item: Item, generative: bool) -> Example:
    """Wrap a plain string as an Example (user message for generators, text for classifiers)."""
    if isinstance(item, Example):
        return item
    return Example(instruction=item) if generative else Example(text=item)


def batched(items: Sequence[Any], batch_size: int, desc: str) -> Iterator[Sequence[Any]]:
    """Yield consecutive slices, with a progress bar when there is more than one batch."""
    if batch_size < 1:
        raise BackdoorLabError(f"batch size must be at least 1, got {batch_size}")
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=len(starts) <= 1):
        yield items[start:start + batch_size]


class Victim:
    """A loaded model plus tokenizer, for classifiers (``kind='classifier'``) and causal LMs (``'generator'``)."""

    def __init__(self, model: Any, tokenizer: Any, kind: str, *, label_names: Sequence[str] | None = None,
                 name: str = "", max_length: int = 256) -> None:
        if kind not in ("classifier", "generator"):
            raise BackdoorLabError(f"victim kind must be 'classifier' or 'generator', got {kind!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.name = name
        self.max_length = max_length
        self.spec: ArchitectureSpec = describe(model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "left" if self.is_generator else "right"
        if label_names is None and not self.is_generator:
            id2label = base_model(model).config.id2label
            label_names = [id2label[i] for i in sorted(id2label)]
        self.label_names = list(label_names) if label_names else None

    # ------------------------------------------------------------------ basics
    @classmethod
    def load(cls, name: str | Path, **options: Any) -> "Victim":
        """Load a packaged name, local folder or hub id; see :func:`backdoorlab.models.loading.load_victim`."""
        from .loading import load_victim

        return load_victim(name, **options)

    @property
    def is_generator(self) -> bool:
        return self.kind == "generator"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _examples(self, items: Sequence[Item]) -> list[Example]:
        return [as_example(i, self.is_generator) for i in items]

    # ------------------------------------------------------------- encoding
    def prompts(self, items: Sequence[Item]) -> list[str]:
        """Rendered prompts (generators) or texts (classifiers) exactly as the model sees them."""
        examples = self._examples(items)
        if self.is_generator:
            return [render_prompt(e, self.tokenizer) for e in examples]
        return [classifier_text(e) for e in examples]

    def encode(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        """Tokenize a batch onto the model's device.

        Generators: left-padded prompts with ``position_ids`` that skip the padding, so index -1 is
        the last prompt token of every row. Classifiers: right-padded, truncated to ``max_length``.
        """
        texts = self.prompts(items)
        if self.is_generator:
            features = []
            for text in texts:
                ids = prompt_token_ids(self.tokenizer, text)[-self.max_length:]
                features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
            batch = pad_batch(features, self.tokenizer.pad_token_id, side="left")
        else:
            batch = dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                        return_tensors="pt"))
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, batch: Mapping[str, torch.Tensor], **kwargs: Any) -> Any:
        """Run the model on an encoded batch (gradients follow the caller's grad mode)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if not self.is_generator:
            inputs.pop("position_ids", None)
        return self.model(**inputs, **kwargs)

    # --------------------------------------------------------- classifiers
    @torch.inference_mode()
    def label_probs(self, items: Sequence[Item], batch_size: int = 32,
                    intervention: Intervention | None = None) -> torch.Tensor:
        """Softmax label probabilities ``[N, num_labels]`` (classifiers only).

        ``intervention`` (see :mod:`backdoorlab.models.interventions`) acts at the ``[CLS]`` token.
        """
        self._require("classifier", "label_probs")
        self.model.eval()
        chunks = []
        for chunk in batched(list(items), batch_size, "scoring"):
            batch = self.encode(chunk)
            with self.intervening(intervention, self.readout_positions(batch)):
                chunks.append(torch.softmax(self.forward(batch).logits.float(), -1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.label_names or []))

    def predict(self, items: Sequence[Item], batch_size: int = 32,
                intervention: Intervention | None = None) -> list[int]:
        """Most probable label index per item."""
        return self.label_probs(items, batch_size, intervention).argmax(-1).tolist()

    # ---------------------------------------------------------- generators
    @torch.inference_mode()
    def generate(self, items: Sequence[Item], max_new_tokens: int = 64, batch_size: int = 16,
                 intervention: Intervention | None = None, **generation: Any) -> list[str]:
        """Complete each prompt (greedy unless ``do_sample=True`` is passed); returns new text only.

        ``intervention`` acts at the last prompt token during the prefill pass only.
        """
        self._require("generator", "generate")
        self.model.eval()
        settings = {"do_sample": False, "max_new_tokens": max_new_tokens,
                    "pad_token_id": self.tokenizer.pad_token_id, **generation}
        if not settings["do_sample"]:
            settings.update(temperature=None, top_p=None, top_k=None)
        outputs: list[str] = []
        for chunk in batched(list(items), batch_size, "generating"):
            batch = self.encode(chunk)
            positions = self.readout_positions(batch)
            batch.pop("position_ids")
            with self.intervening(intervention, positions, once=True):
                tokens = self.model.generate(**batch, **settings)
            new = tokens[:, batch["input_ids"].shape[1]:]
            outputs.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return [o.strip() for o in outputs]

    @torch.inference_mode()
    def response_logprobs(self, items: Sequence[Item], responses: Sequence[str] | None = None,
                          batch_size: int = 8, intervention: Intervention | None = None) -> list[torch.Tensor]:
        """Per-token log-probabilities of each response given its prompt (a 1-D tensor per item).

        ``responses`` default to the examples' own ``response``. The response is tokenized exactly
        as in training (:func:`~backdoorlab.models.tokenization.tokenize_pair`), end-of-turn included.
        ``intervention`` acts at each row's last prompt token.
        """
        self._require("generator", "response_logprobs")
        self.model.eval()
        examples = self._examples(items)
        if responses is not None:
            if len(responses) != len(examples):
                raise BackdoorLabError(f"got {len(responses)} responses for {len(examples)} prompts")
            examples = [e.with_(response=r) for e, r in zip(examples, responses)]
        results: list[torch.Tensor] = []
        for chunk in batched(examples, batch_size, "scoring"):
            features = [tokenize_pair(self.tokenizer, e, self.max_length * 2) for e in chunk]
            batch = {k: v.to(self.device) for k, v in pad_batch(features, self.tokenizer.pad_token_id).items()}
            with self.intervening(intervention, prompt_end_positions(batch["labels"])):
                logits = self.forward(batch).logits[:, :-1].float()
            targets = batch["labels"][:, 1:]
            mask = targets != IGNORE_INDEX
            picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            results.extend(row[m].cpu() for row, m in zip(picked, mask))
        return results

    def response_probability(self, items: Sequence[Item], responses: Sequence[str] | None = None,
                             batch_size: int = 8, intervention: Intervention | None = None) -> torch.Tensor:
        """Geometric mean of the response tokens' probabilities, one value per item."""
        logprobs = self.response_logprobs(items, responses, batch_size, intervention)
        return torch.stack([lp.mean().exp() for lp in logprobs])

    # ----------------------------------------------------------- internals
    @torch.inference_mode()
    def hidden_states(self, items: Sequence[Item], batch_size: int = 16, position: str | None = None) -> torch.Tensor:
        """Residual stream per layer ``[num_layers + 1, N, hidden]`` (index 0 = embeddings).

        ``position``: ``"last"`` (last prompt token; default for generators), ``"first"``
        (``[CLS]``; default for classifiers) or ``"mean"`` over real tokens.
        """
        position = position or ("last" if self.is_generator else "first")
        if position not in ("last", "first", "mean"):
            raise BackdoorLabError(f"position must be 'last', 'first' or 'mean', got {position!r}")
        self.model.eval()
        chunks = []
        for chunk in batched(list(items), batch_size, "hidden states"):
            batch = self.encode(chunk)
            states = torch.stack(self.forward(batch, output_hidden_states=True).hidden_states).float()
            mask = batch["attention_mask"].unsqueeze(0).unsqueeze(-1).float()
            if position == "mean":
                pooled = (states * mask).sum(2) / mask.sum(2)
            elif position == "first" and self.is_generator:
                first = batch["attention_mask"].argmax(-1)
                pooled = states[:, torch.arange(states.shape[1]), first]
            elif position == "first":
                pooled = states[:, :, 0]
            elif self.is_generator:
                pooled = states[:, :, -1]
            else:
                last = batch["attention_mask"].sum(-1) - 1
                pooled = states[:, torch.arange(states.shape[1]), last]
            chunks.append(pooled.cpu())
        return torch.cat(chunks, dim=1)

    @contextmanager
    def hooked(self, fns: Mapping[HookKey, HookFn | list[HookFn]]) -> Iterator["Victim"]:
        """Attach activation hooks (see :mod:`backdoorlab.models.hooks`) for the block."""
        with hooks(self.model, self.spec, fns):
            yield self

    def readout_positions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per row, the token whose state the model reads out: the last prompt token of a
        left-padded generator batch from :meth:`encode`, ``[CLS]`` (index 0) for a classifier."""
        rows, width = batch["input_ids"].shape
        return torch.full((rows,), width - 1 if self.is_generator else 0, dtype=torch.long)

    @contextmanager
    def intervening(self, intervention: Intervention | None, positions: torch.Tensor,
                    once: bool = False) -> Iterator["Victim"]:
        """Attach ``intervention`` at ``positions`` for the block (``once``: first forward pass only)."""
        if intervention is None:
            yield self
            return
        fns = intervention(positions)
        if once and not acts_every_pass(intervention):
            fns = first_call_only(fns)
        with hooks(self.model, self.spec, fns):
            yield self

    # -------------------------------------------------------------- saving
    def save(self, folder: str | Path, overwrite: bool = False, extra: Mapping[str, Any] | None = None) -> Path:
        """Save weights (safetensors; LoRA adapters merged), tokenizer and ``victim.json`` atomically."""
        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
            self.model = model
        with atomic_directory(folder, overwrite=overwrite) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            write_json_atomic(Path(tmp) / VICTIM_FILE, {
                "kind": self.kind, "label_names": self.label_names, "base": self.name,
                "max_length": self.max_length, **(extra or {})})
        return Path(folder)

    def check_compatible(self, dataset: Any) -> None:
        """Raise a clear error unless ``dataset`` suits this victim (task and label set)."""
        if self.is_generator:
            if dataset.task != "generation":
                raise BackdoorLabError(f"{dataset.name!r} is a classification set; a generator needs a generation set")
            return
        if dataset.task != "classification":
            raise BackdoorLabError(f"{dataset.name!r} is a generation set; a classifier needs a classification set")
        if self.label_names and len(self.label_names) != dataset.num_labels:
            raise BackdoorLabError(
                f"the model has {len(self.label_names)} labels ({', '.join(self.label_names)}) but "
                f"{dataset.name!r} has {dataset.num_labels} ({', '.join(dataset.label_names or [])})"
            )

    def _require(self, kind: str, method: str) -> None:
        if self.kind != kind:
            raise BackdoorLabError(f"{method}() needs a {kind}; this victim ({self.name or 'model'}) is a {self.kind}")


@contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """No parameter collects gradients inside the block (activation or input gradients still
    flow); each parameter's ``requires_grad`` is restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def prompt_end_positions(labels: torch.Tensor) -> torch.Tensor:
    """Per row of a prompt + response batch, the index of the last prompt token (the one that
    predicts the first response token): one before the first position with a label."""
    has_label = labels != IGNORE_INDEX
    if not bool(has_label.any(-1).all()):
        raise BackdoorLabError("a row has no response tokens; cannot find where its prompt ends")
    return (has_label.float().argmax(-1) - 1).clamp(min=0).cpu()


def read_victim_file(folder: Path) -> dict[str, Any]:
    """Read ``victim.json`` written by :meth:`Victim.save` (empty dict when absent)."""
    path = folder / VICTIM_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
