"""``bd-vax``: purify a generative LLM without knowing its trigger or holding a clean reference.

"Purifying Generative LLMs from Backdoors without Prior Knowledge or Clean Reference" (arXiv
2603.13461, ICLR 2026; project page bd-vax.github.io). The defender holds the suspect and some
clean instruction rows. Four steps:

1. **Variants** (§3.1, :mod:`.variants`): ``variants`` pairs fine-tuned from the suspect, each on
   its own clean batch, with and without a synthetic trigger–behaviour pair of the defender's own.
2. **Signature** (§3.2, :mod:`.signature`): score every MLP channel and attention head by poison
   strength and cross-variant alignment of the pairs' differences; keep the top share per block.
3. **Neutralize** (§3.3, :mod:`.neutralize`): re-initialise the signature's MLP channels (a fully
   fine-tuned suspect; 8% by default) or zero the signature's entries of the LoRA adapter's update
   (a suspect distributed with its adapter; 40% by default). Attention is left intact by default.
4. **Repair** (§3.4): fine-tune on the clean rows (the ``fine-tune`` defense's LoRA recipe) to
   restore fluency.

Nothing here reads a trigger, the attack run or a clean reference model: the only inputs are the
suspect, the defender's clean rows and, for the ``adapter`` mode, the suspect's own adapter.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from ...errors import BackdoorLabError
from ...fileio import write_json_atomic
from ...fingerprint import dataset_digest, digest, model_identity
from ..base import DefenseOutcome, register_defense
from ..inputs import DefenderInputs
from ..shared.clean_rows import CleanRowsDefense
from ..shared.repair import lora_repair
from .components import block_parts, component_count
from .neutralize import MODES, families_with_share, reinitialize, zero_adapter_entries
from .signature import SCORE_FORMS, Signature, compute_signature, random_signature
from .synthetic import synthetic_backdoor
from .variants import VariantDeltas, VariantRecipe, train_pair

SIGNATURE_FILE = "signature.json"
VARIANTS_DIR = "variants"
#: The paper's default share of MLP components per neutralization mode (§3.3).
DEFAULT_SHARE = {"reinit": 0.08, "adapter": 0.40}


@register_defense
@dataclass
class BdVax(CleanRowsDefense):
    """Synthetic backdoored variants → backdoor signature → neutralize → repair (BD-VAX)."""

    name: ClassVar[str] = "bd-vax"
    description: ClassVar[str] = ("train synthetic backdoored variants, neutralize the components they all change, "
                                  "repair on clean rows; no trigger or clean reference needed (BD-VAX)")
    uses: ClassVar[tuple[str, ...]] = ("suspect_adapter",)

    variants: int = 7  # N variant pairs
    variant_rows: int = 16  # rows of each variant's own clean batch D_i
    poison_share: float = 0.5  # share of D_i's rows poisoned with the variant's synthetic backdoor
    variant_method: str = "lora"  # lora | full
    variant_epochs: float = 4.0  # epochs of each variant's fine-tuning
    variant_learning_rate: float = 3e-3  # learning rate of each variant's fine-tuning
    variant_max_length: int = 64  # tokens per row when training variants
    score: str = "sum"  # sum: strength + λ·alignment (the paper's figure) | product (its project page) | random (a control)
    lam: float = 1.0  # λ of the sum form
    neutralize: str = "auto"  # auto (adapter when the suspect's adapter is given, else reinit) | reinit | adapter
    share: float | None = None  # share of each block's MLP channels neutralized; default 0.08 (reinit), 0.40 (adapter)
    attention_share: float = 0.0  # share of each block's attention heads neutralized (the paper leaves them)
    repair_epochs: float = 2.0  # epochs of the clean repair fine-tune (0: no repair)
    repair_learning_rate: float = 2e-4  # learning rate of the repair (LoRA, the fine-tune recipe)
    keep_variants: bool = False  # keep the pairs' differences (bfloat16, about 2 bytes per block weight each)
    variants_dir: str | None = None  # keep the pairs in this folder, shared by runs on the same suspect and rows

    def __post_init__(self) -> None:
        checks = [(1 <= self.variants, f"variants must be at least 1, got {self.variants}"),
                  (0 < self.poison_share < 1, f"poison_share must be in (0, 1), got {self.poison_share}"),
                  (self.score in (*SCORE_FORMS, "random"),
                   f"score must be one of {', '.join(SCORE_FORMS)} or random, got {self.score!r}"),
                  (self.lam >= 0, f"lam must be non-negative, got {self.lam}"),
                  (self.neutralize in ("auto", *MODES),
                   f"neutralize must be auto, {' or '.join(MODES)}, got {self.neutralize!r}"),
                  (self.share is None or 0 < self.share <= 1, f"share must be in (0, 1], got {self.share}"),
                  (0 <= self.attention_share <= 1, f"attention_share must be in [0, 1], got {self.attention_share}"),
                  (self.repair_epochs >= 0, f"repair_epochs must be non-negative, got {self.repair_epochs}")]
        for ok, message in checks:
            if not ok:
                raise BackdoorLabError(f"{self.name}: {message}")
        synthetic_backdoor(self.variants - 1)  # enough synthetic backdoors for every variant
        self.recipe()

    def recipe(self) -> VariantRecipe:
        return VariantRecipe(rows=self.variant_rows, poison_share=self.poison_share, method=self.variant_method,
                             epochs=self.variant_epochs, learning_rate=self.variant_learning_rate,
                             max_length=self.variant_max_length)

    def mode(self, inputs: DefenderInputs) -> str:
        if self.neutralize == "adapter" and inputs.suspect_adapter is None:
            raise BackdoorLabError(f"{self.name}: neutralize=adapter zeroes entries of the suspect's LoRA adapter, and "
                                   "none was given (--suspect-adapter); use neutralize=reinit for a suspect without one")
        if self.neutralize == "auto":
            return "adapter" if inputs.suspect_adapter is not None else "reinit"
        return self.neutralize

    def check_inputs(self, inputs: DefenderInputs) -> None:
        super().check_inputs(inputs)
        held = self.clean_rows(inputs)
        if self.score != "random":  # the random control trains no variants
            self.recipe().check_rows(len(held))
        self.mode(inputs)

    def apply(self, victim: Any, inputs: DefenderInputs, workdir: Path) -> DefenseOutcome:
        if not victim.is_generator:
            raise BackdoorLabError(f"{self.name} purifies generative LLMs; {victim.name} is a classifier")
        blocks = block_parts(victim)  # a clear error before any training on an unsupported architecture
        clean = self.clean_rows(inputs)
        mode = self.mode(inputs)
        share = self.share if self.share is not None else DEFAULT_SHARE[mode]
        shares = families_with_share(share, self.attention_share)
        if self.score == "random":  # the control: no variants, the same share drawn at random
            pairs, store = [], None
            counts = {f: component_count(victim.spec, f, blocks[0]["down"].linear.in_features) for f in shares}
            signature = random_signature(victim.spec.num_layers, counts, shares, self.seed)
        else:
            pairs, store, signature = self.learn_signature(victim, clean, Path(workdir), shares)
        write_json_atomic(Path(workdir) / SIGNATURE_FILE, signature.to_dict())
        if mode == "adapter":
            changed = zero_adapter_entries(victim, signature, inputs.suspect_adapter)  # type: ignore[arg-type]
        else:
            changed = reinitialize(victim, signature, self.seed)
        repaired = self.repair(victim, clean, Path(workdir))
        if store is not None and not (self.keep_variants or self.variants_dir):
            shutil.rmtree(store, ignore_errors=True)
        findings = {
            "mode": mode, "share": share, "attention_share": self.attention_share, "score": self.score,
            "lam": self.lam, "variants": len(pairs), "clean_rows": len(clean), "clean_source": clean.source,
            "neutralized_entries": changed,
            "neutralized_components": {f: signature.count(f) for f in signature.chosen},
            "synthetic_rates": [{"trigger": p["synthetic_trigger"], **(p["synthetic_rate"] or {})} for p in pairs],
            "signature": SIGNATURE_FILE, "repair": repaired[1]}
        return DefenseOutcome(repaired[0], findings)

    def learn_signature(self, victim: Any, clean: Any, workdir: Path,
                        shares: dict[str, float]) -> tuple[list[dict[str, Any]], Path, Signature]:
        """Steps 1 and 2: train (or reuse) the variant pairs, then score the components."""
        identity = model_identity(victim)
        store = self.variant_store(workdir, identity, clean)
        folders = [store / f"pair-{i}" for i in range(self.variants)]
        pairs = [train_pair(victim, clean, synthetic_backdoor(i), self.recipe(), self.seed + i, folder, identity)
                 for i, folder in enumerate(tqdm(folders, desc="bd-vax variant pairs", unit="pair"))]
        deltas = VariantDeltas(folders)
        signature = compute_signature(deltas.block, len(deltas), victim.spec.num_layers, victim.spec, shares,
                                      self.score, self.lam)
        return pairs, store, signature

    def variant_store(self, workdir: Path, suspect_identity: str, clean: Any) -> Path:
        """Where the pairs live: ``workdir/variants``, or with ``variants_dir`` a subfolder named by the
        suspect, the clean rows and the recipe, so runs that differ only in later steps share them."""
        if self.variants_dir is None:
            return workdir / VARIANTS_DIR
        key = digest({"suspect": suspect_identity, "clean_rows": dataset_digest(clean),
                      "recipe": asdict(self.recipe()), "seed": self.seed})
        return Path(self.variants_dir) / key[:16]

    def repair(self, victim: Any, clean: Any, workdir: Path) -> tuple[Any, dict[str, Any]]:
        """Fine-tune the neutralized suspect on the clean rows (the ``fine-tune`` recipe); none at 0 epochs."""
        return lora_repair(victim, clean, workdir, epochs=self.repair_epochs, learning_rate=self.repair_learning_rate,
                           seed=self.seed)
