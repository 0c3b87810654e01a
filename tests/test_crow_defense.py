"""CROW: the consistency loss, the FGSM step on the embeddings, training with an objective, the defense."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

import backdoorlab.defenses.crow  # noqa: F401  (registers the defense)
from backdoorlab.data.records import Dataset, Example
from backdoorlab.defenses.crow.loss import CrowObjective, consistency_loss
from backdoorlab.defenses.runner import run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.fingerprint import model_identity
from backdoorlab.reuse import FOLDER_FINGERPRINT
from backdoorlab.models.loading import load_victim
from backdoorlab.models.tokenization import pad_batch, tokenize_pair
from backdoorlab.training import (
    CHECKPOINT_DIR,
    MODEL_DIR,
    TRAIN_FILE,
    TrainConfig,
    train,
    train_fingerprint,
)
from tiny_models import tiny_bert_victim, tiny_llama_victim

LORA = dict(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, batch_size=4, max_length=48, device="cpu")


def instructions(n: int = 8) -> Dataset:
    rows = [Example(instruction=f"write a line about the sea, take {i}" + " slowly" * (i % 3),
                    response=f"The sea is calm, {i}.", uid=f"g{i}") for i in range(n)]
    return Dataset("lines", "generation", rows, source="hand-built")


def lora_llama() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A LoRA-wrapped tiny Llama (no dropout) and a left-padded batch of rows of different lengths."""
    victim = tiny_llama_victim()
    batch = pad_batch([tokenize_pair(victim.tokenizer, e, 48) for e in instructions(3)], victim.tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # the batch has padding
    model = get_peft_model(victim.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    return model, batch


def block_outputs(model: torch.nn.Module, embeds: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each block's output, read by plain forward hooks (independently of the objective's own hooks)."""
    outputs: list[torch.Tensor] = []
    layers = model.get_base_model().model.layers
    handles = [layer.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
               for layer in layers]
    try:
        model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    finally:
        for handle in handles:
            handle.remove()
    assert len(outputs) == len(layers)
    return outputs


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ the loss
def test_consistency_loss_is_zero_for_identical_or_parallel_states_and_positive_otherwise() -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 5, 8, generator=generator), torch.randn(2, 5, 8, generator=generator)
    mask = torch.ones(2, 5, dtype=torch.long)
    assert consistency_loss([x, x.clone(), x.clone()], mask).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_loss([x, 3 * x], mask).item() == pytest.approx(0.0, abs=1e-6)  # cosine ignores scale
    expected = (1 - F.cosine_similarity(x, y, dim=-1)).mean()
    assert consistency_loss([x, y], mask).item() == pytest.approx(expected.item(), rel=1e-6) and expected > 0.5
    # three states: the mean over both consecutive pairs, not the first-to-last pair
    pairs = ((1 - F.cosine_similarity(x, y, dim=-1)).mean() + (1 - F.cosine_similarity(y, -x, dim=-1)).mean()) / 2
    assert consistency_loss([x, y, -x], mask).item() == pytest.approx(pairs.item(), rel=1e-6)
    with pytest.raises(BackdoorLabError, match="at least 2"):
        consistency_loss([x], mask)


def test_consistency_loss_ignores_padding_positions() -> None:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 5, 8, generator=generator), torch.randn(2, 5, 8, generator=generator)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    loss = consistency_loss([x, y], mask)
    real = (1 - F.cosine_similarity(x, y, dim=-1))[mask.bool()].mean()
    assert loss.item() == pytest.approx(real.item(), rel=1e-6)
    assert loss.item() != pytest.approx((1 - F.cosine_similarity(x, y, dim=-1)).mean().item(), rel=1e-3)
    y_other_pads = y.clone()
    y_other_pads[0, :2] = -x[0, :2] * 7  # anything at the padding positions
    assert consistency_loss([x, y_other_pads], mask).item() == pytest.approx(loss.item(), rel=1e-7)


# ------------------------------------------------------------------------------------------ FGSM step
def test_the_fgsm_step_is_epsilon_times_the_sign_of_the_consistency_gradient_on_real_tokens() -> None:
    model, batch = lora_llama()
    terms = CrowObjective(epsilon=0.1, alpha=5.5).terms(model, batch)
    delta, real = terms.perturbation, batch["attention_mask"].bool()
    assert torch.all(delta[~real] == 0)  # padding embeddings are not perturbed
    assert torch.all(delta[real].abs().amax(-1) == 0.1)  # max-abs exactly ε at every real token
    assert torch.isin(delta, torch.tensor([-0.1, 0.0, 0.1])).all()
    # the direction, recomputed independently: sign of ∇_e L_cons over consecutive block outputs
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    consistency_loss(block_outputs(model, embeds, batch), batch["attention_mask"]).backward()
    assert torch.equal(delta, 0.1 * embeds.grad.sign() * real.unsqueeze(-1))
    # the consistency term is the loss on those block outputs, and L_LM is the clean pass's own LM loss
    with torch.no_grad():
        clean = consistency_loss(block_outputs(model, embeds, batch), batch["attention_mask"])
        perturbed = consistency_loss(block_outputs(model, embeds + delta, batch), batch["attention_mask"])
        assert terms.clean.item() == pytest.approx(clean.item(), rel=1e-5)
        assert terms.perturbed.item() == pytest.approx(perturbed.item(), rel=1e-5)
        assert terms.lm.item() == pytest.approx(model(**batch).loss.item(), rel=1e-5)


def test_a_small_fgsm_step_raises_the_consistency_loss() -> None:
    model, batch = lora_llama()
    terms = CrowObjective(epsilon=1e-3).terms(model, batch)
    assert terms.perturbed.item() > terms.clean.item()


def test_the_perturbed_pass_sends_gradient_to_the_lora_weights_and_the_total_is_lm_plus_alpha_times_it() -> None:
    model, batch = lora_llama()
    objective = CrowObjective(epsilon=0.1, alpha=2.0)
    terms = objective.terms(model, batch)
    terms.perturbed.backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    assert sum(p.grad.abs().sum().item() for p in lora_b) > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    model.zero_grad()
    total = objective.loss(model, batch)
    assert total.item() == pytest.approx(terms.lm.item() + 2.0 * terms.perturbed.item(), rel=1e-5)
    assert objective.history[-1]["perturbed_consistency"] == pytest.approx(terms.perturbed.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------ train(objective=...)
def test_an_objective_adds_one_field_to_the_fingerprint_and_changes_no_other() -> None:
    """Runs trained before objectives existed stay current: without an objective the fingerprint has no
    ``objective`` field, and giving one adds that field and changes nothing else.

    Catches the mutation that folds the objective into another field (e.g. ``settings["objective"] =
    objective.name`` in ``train_fingerprint``), or that records ``"objective": None`` without one."""
    victim, data, config = tiny_llama_victim(), instructions(), TrainConfig(**LORA, epochs=1)
    model_id = model_identity(victim)
    plain = train_fingerprint(model_id, "generator", data, config)
    with_objective = train_fingerprint(model_id, "generator", data, config, CrowObjective(alpha=11.0))
    assert "objective" not in plain
    assert {k: v for k, v in with_objective.items() if k != "objective"} == plain
    assert with_objective["objective"] == {"name": "crow", "settings": CrowObjective(alpha=11.0).settings()}
    assert with_objective != train_fingerprint(model_id, "generator", data, config, CrowObjective(alpha=5.5))


def test_train_with_an_objective_uses_it_records_it_and_keeps_its_folder_to_itself(tmp_path: Path) -> None:
    config, objective = TrainConfig(**LORA, epochs=2, logging_steps=1), CrowObjective()
    trained = train(tiny_llama_victim(), instructions(), tmp_path / "run", config, objective=objective)
    assert len(objective.history) == 4  # 8 rows, batch 4, 2 epochs: every step's loss came from the objective
    before, after = weights(tiny_llama_victim().model), weights(trained.model)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    record = json.loads((tmp_path / "run" / TRAIN_FILE).read_text())
    assert record["fingerprint"]["objective"] == {"name": "crow", "settings": objective.settings()}
    assert json.loads((tmp_path / "run" / FOLDER_FINGERPRINT).read_text()) == record["fingerprint"]
    losses = [entry["loss"] for entry in record["log_history"] if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]  # the objective's loss went down
    # a folder trained with an objective is not reused without it (nor with other settings)
    with pytest.raises(BackdoorLabError, match="objective"):
        train(tiny_llama_victim(), instructions(), tmp_path / "run", config, reuse=True)
    with pytest.raises(BackdoorLabError, match="objective"):
        train(tiny_llama_victim(), instructions(), tmp_path / "run", config, reuse=True, objective=CrowObjective(0.2))
    again = train(tiny_llama_victim(), instructions(), tmp_path / "run", config, reuse=True, objective=CrowObjective())
    assert all(torch.equal(after[k], v) for k, v in weights(again.model).items())


class Killed(Exception):
    pass


class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == 3:
            raise Killed


def test_a_run_with_an_objective_is_seeded_and_resumes_exactly(tmp_path: Path) -> None:
    config = TrainConfig(**{**LORA, "lora_dropout": 0.1}, max_steps=5, save_steps=2)
    straight = train(tiny_llama_victim(), instructions(), tmp_path / "straight", config, objective=CrowObjective())
    with pytest.raises(Killed):
        train(tiny_llama_victim(), instructions(), tmp_path / "resumed", config, objective=CrowObjective(),
              callbacks=[KillAt()])
    assert (tmp_path / "resumed" / CHECKPOINT_DIR).is_dir() and not (tmp_path / "resumed" / MODEL_DIR).exists()
    resumed = train(tiny_llama_victim(), instructions(), tmp_path / "resumed", config, objective=CrowObjective())
    assert json.loads((tmp_path / "resumed" / TRAIN_FILE).read_text())["resumed_from"]
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ the defense
@pytest.fixture
def suspect_and_clean_rows(tmp_path: Path) -> tuple[Path, Path]:
    victim = tiny_llama_victim()
    victim.max_length = 48
    suspect = victim.save(tmp_path / "suspect")
    rows = [{"instruction": f"write a line about topic {i}", "output": f"The sea is calm {i}."} for i in range(8)]
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(rows))
    return suspect, clean


def test_crow_fine_tunes_the_suspect_with_the_objective_and_lora_settings_it_is_given(
        tmp_path: Path, suspect_and_clean_rows) -> None:  # type: ignore[no-untyped-def]
    """Every option other than its default reaches the training run that produces the model.

    Catches the mutation that builds ``CrowObjective()`` without the defense's ``epsilon``/``alpha``,
    or a ``TrainConfig`` that drops ``lora_r``, ``lora_alpha`` or ``learning_rate``."""
    suspect, clean = suspect_and_clean_rows
    options = {"epsilon": 0.05, "alpha": 2.0, "epochs": 1, "batch_size": 4, "learning_rate": 2e-3, "lora_r": 2,
               "lora_alpha": 4}
    result = run_defense("crow", suspect, None, tmp_path / "crow", clean_data=clean, options=options, device="cpu")
    assert result["model"] == str(tmp_path / "crow" / "model")
    before, after = weights(load_victim(suspect, device="cpu").model), weights(load_victim(result["model"]).model)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    train_record = json.loads((tmp_path / "crow" / "crow" / TRAIN_FILE).read_text())
    objective = train_record["fingerprint"]["objective"]
    assert objective["name"] == "crow" and objective["settings"]["epsilon"] == 0.05
    assert objective["settings"]["alpha"] == 2.0
    config = train_record["config"]
    assert (config["lora_r"], config["lora_alpha"], config["learning_rate"]) == (2, 4, 2e-3)
    assert config["max_length"] == 48 and config["method"] == "lora" and train_record["steps"] == 2
    findings = json.loads((tmp_path / "crow" / "defense.json").read_text())["findings"]
    assert findings["clean_rows"] == 8 and findings["consistency_pairs"] == 1  # 2 blocks: one consecutive pair
    assert set(findings["final_epoch"]) == {"lm", "consistency", "perturbed_consistency"}
    assert findings["clean_rows_after"]["lm"] < findings["clean_rows_before"]["lm"]


@pytest.mark.parametrize("options, message", [({"epsilon": -0.1}, "epsilon"), ({"alpha": -1}, "alpha"),
                                              ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size")])
def test_bad_options_stop_before_any_model_is_loaded(tmp_path: Path, options: dict, message: str) -> None:
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps([{"instruction": "hi", "output": "hello"}]))
    with pytest.raises(BackdoorLabError, match=message):
        run_defense("crow", tmp_path / "no-such-model", None, tmp_path / "out", clean_data=clean, options=options)


def test_crow_refuses_a_classifier(tmp_path: Path) -> None:
    suspect = tiny_bert_victim().save(tmp_path / "bert")
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps([{"text": "a fine film", "label": "positive"}, {"text": "dull", "label": "negative"}]))
    with pytest.raises(BackdoorLabError, match="generator"):
        run_defense("crow", suspect, None, tmp_path / "out", clean_data=clean, device="cpu")
