"""Victim interface and hook points on tiny random models of both architecture families."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from backdoorlab.data import Example
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models import ActivationCache, Victim, describe, hooks, load_victim, recording, resolve_model
from backdoorlab.models.architecture import transformer_layers
from tiny_models import ARCHITECTURES, tiny_bert_victim, tiny_llama_victim, tiny_victim

PROMPTS = [Example(instruction="hello there friend"), Example(instruction="a much longer prompt with many more words in it")]


@pytest.fixture(params=[*ARCHITECTURES, "gemma"])
def victim(request) -> Victim:
    return tiny_victim(request.param)


def _inputs(victim: Victim) -> list:
    return PROMPTS if victim.is_generator else ["a short text", "a somewhat longer text to classify here"]


def _logits(victim: Victim, items) -> torch.Tensor:
    with torch.no_grad():
        return victim.forward(victim.encode(items)).logits


def test_describe_reads_head_geometry() -> None:
    spec = tiny_victim("qwen2").spec
    assert (spec.family, spec.num_heads, spec.num_kv_heads, spec.head_dim) == ("decoder", 6, 2, 8)
    assert tiny_bert_victim(["a", "b"]).spec.family == "encoder"


def test_head_out_has_one_slice_per_query_head(victim: Victim) -> None:
    cache = ActivationCache()
    with victim.hooked({(1, "head_out"): recording(cache, (1, "head_out"))}):
        _logits(victim, _inputs(victim))
    batch, _, heads, dim = cache[(1, "head_out")].shape
    assert (batch, heads, dim) == (2, victim.spec.num_heads, victim.spec.head_dim)


def _patched_head_logits(victim: Victim, items, shift: float) -> torch.Tensor:
    """Logits with head 1 of layer 0 set to its own recorded output plus ``shift`` at every position."""
    cache = ActivationCache()
    with victim.hooked({(0, "head_out"): recording(cache, (0, "head_out"))}):
        _logits(victim, items)
    value = cache[(0, "head_out")][:, :, 1].clone() + shift

    def patch(activation: torch.Tensor) -> torch.Tensor:
        patched = activation.clone()
        patched[:, :, 1] = value
        return patched

    with victim.hooked({(0, "head_out"): patch}):
        return _logits(victim, items)


def test_patching_a_head_moves_the_output_and_its_own_value_restores_it(victim: Victim) -> None:
    items = _inputs(victim)
    before = _logits(victim, items)
    assert not torch.allclose(_patched_head_logits(victim, items, shift=1.0), before)
    torch.testing.assert_close(_patched_head_logits(victim, items, shift=0.0), before)


def test_the_patch_check_fails_when_hook_edits_are_dropped(monkeypatch) -> None:
    """Mutation check: if the hooks ran but their returned edits were ignored, the check above sees no move."""
    hook_module = importlib.import_module("backdoorlab.models.hooks")  # the package re-exports hooks() by this name
    register = hook_module._register

    def dropping_edits(model, spec, layer, point, fn):  # type: ignore[no-untyped-def]
        def read_only(activation: torch.Tensor) -> None:
            fn(activation)
        return register(model, spec, layer, point, read_only)

    victim = tiny_llama_victim()
    items = _inputs(victim)
    monkeypatch.setattr(hook_module, "_register", dropping_edits)
    torch.testing.assert_close(_patched_head_logits(victim, items, shift=1.0), _logits(victim, items))


def test_ablating_a_head_changes_the_output(victim: Victim) -> None:
    items = _inputs(victim)
    before = _logits(victim, items)

    def ablate(activation: torch.Tensor) -> torch.Tensor:
        edited = activation.clone()
        edited[:, :, 0] = 0
        return edited

    with victim.hooked({(1, "head_out"): ablate}):
        after = _logits(victim, items)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(_logits(victim, items), before)  # hooks are gone after the block


def test_residual_hook_points_read_and_edit(victim: Victim) -> None:
    items = _inputs(victim)
    before = _logits(victim, items)
    cache = ActivationCache()
    keys = [(0, "resid_pre"), (0, "attn_in"), (1, "resid_post")]
    with victim.hooked({k: recording(cache, k) for k in keys}):
        _logits(victim, items)
    for key in keys:
        assert cache[key].shape[-1] == victim.spec.hidden_size
    if victim.is_generator:  # pre-norm: attention reads the normalised residual, not the raw one
        assert not torch.allclose(cache[(0, "resid_pre")], cache[(0, "attn_in")])
    with victim.hooked({(0, "resid_post"): lambda a: a + 1.0}):
        assert not torch.allclose(_logits(victim, items), before)


def test_hooks_are_removed_when_the_block_raises() -> None:
    victim = tiny_llama_victim()
    layer = transformer_layers(victim.model, victim.spec)[0]
    with pytest.raises(RuntimeError):
        with victim.hooked({(0, "resid_post"): lambda a: None}):
            raise RuntimeError("boom")
    assert not layer._forward_hooks


def test_bad_hook_keys_are_rejected() -> None:
    victim = tiny_llama_victim()
    with pytest.raises(BackdoorLabError, match="unknown hook point"):
        with hooks(victim.model, victim.spec, {(0, "mlp_out"): lambda a: None}):
            pass
    with pytest.raises(BackdoorLabError, match="out of range"):
        with victim.hooked({(99, "head_out"): lambda a: None}):
            pass


def test_left_padding_does_not_change_scores() -> None:
    victim = tiny_llama_victim()
    responses = ["yes indeed", "no"]
    together = victim.response_logprobs(PROMPTS, responses)
    alone = [victim.response_logprobs([p], [r])[0] for p, r in zip(PROMPTS, responses)]
    for joint, single in zip(together, alone):
        torch.testing.assert_close(joint, single, atol=1e-4, rtol=1e-4)
    probs = victim.response_probability(PROMPTS, responses)
    assert probs.shape == (2,) and bool(((probs > 0) & (probs <= 1)).all())


def test_hidden_states_and_generation_shapes() -> None:
    gen = tiny_llama_victim()
    states = gen.hidden_states(PROMPTS)
    assert states.shape == (gen.spec.num_layers + 1, 2, gen.spec.hidden_size)
    alone = gen.hidden_states(PROMPTS[:1])
    torch.testing.assert_close(states[:, :1], alone, atol=1e-4, rtol=1e-4)
    outputs = gen.generate(PROMPTS, max_new_tokens=4)
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    cls = tiny_bert_victim(["neg", "pos", "mixed"])
    probs = cls.label_probs(["one", "two", "three"])
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert cls.hidden_states(["one"]).shape == (cls.spec.num_layers + 1, 1, cls.spec.hidden_size)


def test_kind_specific_methods_say_what_is_needed() -> None:
    with pytest.raises(BackdoorLabError, match="needs a generator"):
        tiny_bert_victim(["a", "b"]).generate(["x"])
    with pytest.raises(BackdoorLabError, match="needs a classifier"):
        tiny_llama_victim().label_probs(["x"])


def test_unsupported_architecture_is_refused() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50))
    with pytest.raises(BackdoorLabError, match="unsupported architecture 'gpt2'"):
        describe(model)


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    victim = tiny_bert_victim(["neg", "pos"])
    before = victim.label_probs(["round trip"])
    victim.save(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    loaded = load_victim(tmp_path / "model", device="cpu")
    assert loaded.kind == "classifier" and loaded.label_names == ["neg", "pos"]
    torch.testing.assert_close(loaded.label_probs(["round trip"]), before)
    with pytest.raises(BackdoorLabError, match="already exists"):
        victim.save(tmp_path / "model")


def test_pickled_weights_are_refused_unless_opted_in(tmp_path: Path) -> None:
    victim = tiny_bert_victim(["neg", "pos"])
    folder = tmp_path / "pickled"
    victim.model.save_pretrained(folder, safe_serialization=False)
    victim.tokenizer.save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    if not list(folder.glob("*.bin")):  # this transformers version always writes safetensors
        torch.save(victim.model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(BackdoorLabError, match="only pickled weights"):
        load_victim(folder, device="cpu")
    assert resolve_model(folder, allow_pickle=True)[0] == str(folder)


def test_unknown_model_names_list_the_packaged_ones(monkeypatch) -> None:
    with pytest.raises(BackdoorLabError, match="known models: minilm-l6, smollm2-135m-instruct"):
        resolve_model("no-such-model")
    from backdoorlab.settings import settings

    monkeypatch.setattr(settings, "offline", True)
    with pytest.raises(BackdoorLabError, match="hub is disabled"):
        resolve_model("someone/some-model")


def test_folder_without_weights_or_config(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="no config.json"):
        resolve_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BackdoorLabError, match="no weights"):
        resolve_model(tmp_path)
