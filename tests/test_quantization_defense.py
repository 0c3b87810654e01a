"""The quantization defense: real int8 / int4 / NF4 weights, the stored integer checkpoint and its
exact dequantization, and the checks on options and models (tiny Llama models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import backdoorlab.defenses.quantization  # noqa: F401  (registers the defense)
from backdoorlab.defenses.base import get_defense
from backdoorlab.defenses.inputs import DefenderInputs
from backdoorlab.defenses.quantization import NF4_CODE_BOOK, dequantize, levels_per_group, normal_float_code_book
from backdoorlab.defenses.quantization.schemes import SCHEMES, pack_nibbles, unpack_nibbles
from backdoorlab.defenses.runner import run_defense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.architecture import transformer_layers
from backdoorlab.models.loading import load_victim
from backdoorlab.models.victim import Victim
from backdoorlab.training import training_features
from tiny_models import tiny_llama_victim, tiny_tokenizer

BITS = {"int8": 8, "int4": 4, "nf4": 4}


def wide_llama_victim(seed: int = 0) -> Victim:
    """:func:`tiny_llama_victim` with a 512-wide MLP, so an int8 row (512 weights) can hold more than 128 values."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    return Victim(model, tokenizer, "generator", name="wide-llama")


def block_linears(victim: Victim) -> dict[str, nn.Linear]:
    layers = set(transformer_layers(victim.model, victim.spec).modules())
    return {name: m for name, m in victim.model.named_modules() if isinstance(m, nn.Linear) and m in layers}


def findings(run: Path) -> dict:
    return json.loads((run / "defense.json").read_text())["findings"]


@pytest.fixture(scope="module")
def suspect(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wide_llama_victim().save(tmp_path_factory.mktemp("quantization") / "suspect")


@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4"])
def test_every_quantized_layer_holds_at_most_2_to_the_bits_values_per_group(scheme: str, suspect: Path,
                                                                            tmp_path: Path) -> None:
    bits, group = BITS[scheme], 32
    result = run_defense("quantization", suspect, None, tmp_path / scheme, device="cpu",
                         options={"scheme": scheme, "group_size": group})
    before, after = load_victim(suspect, device="cpu"), load_victim(result["model"], device="cpu")
    size = None if scheme == "int8" else group  # int8: one scale per output row
    linears, originals = block_linears(after), block_linears(before)
    assert len(linears) == 14
    levels = {name: levels_per_group(m.weight, size) for name, m in linears.items()}
    assert max(levels.values()) <= 2 ** bits < max(levels_per_group(m.weight, size) for m in originals.values())
    assert max(levels.values()) > 2 ** (bits - 1)  # a random layer uses most levels: the bound is not vacuous
    found = findings(tmp_path / scheme)
    assert found["max_levels_per_group"] == max(levels.values()) and found["layers_quantized"] == 14
    assert found["bits"] == bits and found["group_size"] == size
    # everything outside the blocks' linear layers is untouched (embeddings, lm_head, norms)
    quantized = {f"{name}.weight" for name in linears}
    before_state, after_state = before.model.state_dict(), after.model.state_dict()
    untouched = [key for key in before_state if key not in quantized]
    assert "model.embed_tokens.weight" in untouched and "lm_head.weight" in untouched
    assert all(torch.equal(before_state[key], after_state[key]) for key in untouched)
    with torch.no_grad():
        errors = [float((linears[n].weight - originals[n].weight).norm() / originals[n].weight.norm()) for n in linears]
    assert 0 < min(errors) and max(errors) < (0.02 if scheme == "int8" else 0.15)
    assert found["mean_relative_weight_error"] == pytest.approx(sum(errors) / len(errors), rel=1e-4)
    # the stored integer checkpoint dequantizes to exactly the saved weights
    weights = dequantize(tmp_path / scheme / "quantized")
    assert set(weights) == set(linears)
    assert all(torch.equal(weights[name], module.weight) for name, module in linears.items())
    numel = sum(m.weight.numel() for m in linears.values())
    assert found["code_bytes"] == (numel if bits == 8 else numel // 2)  # 4-bit codes: two per byte
    assert found["fp32_bytes"] == 4 * numel and found["quantized_bytes"] < found["fp32_bytes"]


def test_the_checkpoint_stores_packed_uint8_codes_and_fp16_scales(suspect: Path, tmp_path: Path) -> None:
    run_defense("quantization", suspect, None, tmp_path / "q", device="cpu", options={"scheme": "int4", "group_size": 32})
    folder = tmp_path / "q" / "quantized"
    layout = json.loads((folder / "quantized.json").read_text())
    assert layout["scheme"] == "int4" and layout["group_size"] == 32 and layout["packed"]
    entry = layout["layers"]["model.layers.0.mlp.down_proj"]
    assert entry["shape"] == [32, 512] and entry["file"] == "block-000.safetensors"
    tensors = load_file(str(folder / entry["file"]))
    codes = tensors["model.layers.0.mlp.down_proj.codes"]
    assert codes.dtype == torch.uint8 and codes.numel() == 32 * 512 // 2
    scales, zeros = tensors["model.layers.0.mlp.down_proj.scales"], tensors["model.layers.0.mlp.down_proj.zeros"]
    assert scales.dtype == zeros.dtype == torch.float16 and scales.shape == zeros.shape == (32, 512 // 32)
    assert bool(((zeros >= 0) & (zeros <= 15) & (zeros == zeros.round())).all())


def test_int8_is_more_accurate_than_4_bit_schemes(suspect: Path, tmp_path: Path) -> None:
    errors = {}
    for scheme in ("int8", "int4", "nf4"):
        run_defense("quantization", suspect, None, tmp_path / scheme, device="cpu",
                    options={"scheme": scheme, "group_size": 32})
        errors[scheme] = findings(tmp_path / scheme)["mean_relative_weight_error"]
    assert 0 < errors["int8"] < errors["int4"] / 4 and errors["int8"] < errors["nf4"] / 4


def test_bad_options_fail_before_a_model_is_loaded(tmp_path: Path) -> None:
    missing = tmp_path / "no-model"  # never read: the options are checked first
    for options, message in [({"scheme": "int3"}, "unknown quantization scheme 'int3'"),
                             ({"group_size": 0}, "positive"),
                             ({"scheme": "int4", "outlier_threshold": 6.0}, "needs scheme int8")]:
        with pytest.raises(BackdoorLabError, match=message):
            run_defense("quantization", missing, None, tmp_path / "x", device="cpu", options=options)
    suspect = tiny_llama_victim().save(tmp_path / "suspect")  # input widths 32 and 64
    with pytest.raises(BackdoorLabError, match="group_size 48 does not divide the input width 32"):
        run_defense("quantization", suspect, None, tmp_path / "g48", device="cpu", options={"group_size": 48})
    assert not (tmp_path / "g48" / "model").exists() and not (tmp_path / "g48" / "quantized").exists()


def test_an_already_quantized_model_is_refused(tmp_path: Path) -> None:
    defense = get_defense("quantization", group_size=32)
    victim = tiny_llama_victim()
    proj = victim.model.model.layers[1].mlp.down_proj
    proj.weight = nn.Parameter(proj.weight.detach().mul(1000).round().to(torch.int8), requires_grad=False)
    with pytest.raises(BackdoorLabError, match="down_proj has int8 weights: the model is already quantized"):
        defense.apply(victim, DefenderInputs(), tmp_path)
    victim = tiny_llama_victim()
    victim.model.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    with pytest.raises(BackdoorLabError, match="already quantized"):
        defense.apply(victim, DefenderInputs(), tmp_path)


def test_a_half_precision_model_keeps_its_dtype_and_matches_its_checkpoint(tmp_path: Path) -> None:
    victim = tiny_llama_victim()
    victim.model.half()
    outcome = get_defense("quantization", scheme="nf4", group_size=32).apply(victim, DefenderInputs(), tmp_path)
    assert outcome.findings["model_dtype"] == "float16" and outcome.findings["max_levels_per_group"] <= 16
    weights = dequantize(tmp_path / "quantized")
    linears = block_linears(outcome.victim)
    assert all(m.weight.dtype == torch.float16 and torch.equal(weights[n], m.weight) for n, m in linears.items())


def test_skip_keeps_matching_layers_in_full_precision(tmp_path: Path) -> None:
    victim = tiny_llama_victim()
    original = victim.model.model.layers[0].self_attn.o_proj.weight.detach().clone()
    outcome = get_defense("quantization", group_size=32, skip=["layers.0.self_attn.o_proj", "*.mlp.up_proj"]).apply(
        victim, DefenderInputs(), tmp_path)
    assert outcome.findings["modules_skipped"] == ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.up_proj",
                                                   "model.layers.1.mlp.up_proj"]
    assert outcome.findings["layers_quantized"] == 11
    assert torch.equal(victim.model.model.layers[0].self_attn.o_proj.weight, original)
    assert "model.layers.0.self_attn.o_proj" not in dequantize(tmp_path / "quantized")


def test_int8_outlier_features_found_on_clean_rows_stay_in_fp16(tmp_path: Path) -> None:
    suspect = tiny_llama_victim().save(tmp_path / "suspect")
    rows = [{"instruction": f"write a line about topic {i}" + " and more" * i, "output": f"The sea is calm {i}."}
            for i in range(6)]
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(rows))
    threshold = 2.0
    run_defense("quantization", suspect, None, tmp_path / "q", clean_data=clean, device="cpu",
                options={"scheme": "int8", "outlier_threshold": threshold, "batch_size": 4})
    record = json.loads((tmp_path / "q" / "defense.json").read_text())
    assert record["inputs"]["clean_rows"]["rows"] == 6 and record["findings"]["outlier_columns"] > 0
    # the outlier features of layer 0's q_proj, found independently: one unpadded row at a time
    before = load_victim(suspect, device="cpu")
    name = "model.layers.0.self_attn.q_proj"
    q_proj = before.model.get_submodule(name)
    peaks = []
    handle = q_proj.register_forward_pre_hook(lambda m, args: peaks.append(args[0].abs().amax(dim=(0, 1))))
    with torch.inference_mode():
        for feature in training_features(before, clean_rows_from(clean), before.max_length):
            before.model(input_ids=torch.tensor([feature["input_ids"]]))
    handle.remove()
    expected = (torch.stack(peaks).amax(0) > threshold).nonzero().squeeze(1)
    assert 0 < expected.numel() < 32
    stored = load_file(str(tmp_path / "q" / "quantized" / "block-000.safetensors"))
    assert torch.equal(stored[f"{name}.outlier_columns"], expected)
    after = load_victim(tmp_path / "q" / "model", device="cpu").model.get_submodule(name).weight
    assert torch.equal(after[:, expected], q_proj.weight[:, expected].half().float())  # fp16, not int8
    rest = torch.ones(32, dtype=torch.bool)
    rest[expected] = False
    assert levels_per_group(after[:, rest]) <= 256
    assert torch.equal(dequantize(tmp_path / "q" / "quantized")[name], after)
    without = run_defense("quantization", suspect, None, tmp_path / "plain", clean_data=clean, device="cpu",
                          options={"scheme": "int8"})
    assert "clean_rows" not in json.loads((Path(without["model"]).parent / "defense.json").read_text())["inputs"]


def clean_rows_from(path: Path):  # type: ignore[no-untyped-def]
    from backdoorlab.data.registry import load_dataset

    return load_dataset(str(path), "dev")


def test_levels_per_group_counts_distinct_values_in_each_group() -> None:
    weight = torch.tensor([[1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0, -0.0, 0.0, 0.0, 7.0, 7.0, 7.0, 7.0]])
    assert levels_per_group(weight, 4) == 4 and levels_per_group(weight, 2) == 2 and levels_per_group(weight) == 6
    with pytest.raises(BackdoorLabError, match="does not divide"):
        levels_per_group(weight, 3)


def test_4_bit_codes_pack_two_per_byte_and_unpack_exactly() -> None:
    codes = torch.randint(0, 16, (3, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack_nibbles(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 8  # 15 codes, padded to 16 nibbles
    assert int(packed[0]) == int(codes[0, 0]) | int(codes[0, 1]) << 4
    assert torch.equal(unpack_nibbles(packed, (3, 5)), codes)


def test_nf4_code_book_is_the_published_normal_float_table() -> None:
    book = torch.tensor(NF4_CODE_BOOK)
    assert book.numel() == 16 and torch.equal(book, book.sort().values)
    assert book[0] == -1 and book[-1] == 1 and (book == 0).sum() == 1
    assert (book < 0).sum() == 7 and (book > 0).sum() == 8  # asymmetric split so that 0 is exact
    assert float((book + book.flip(0)).abs().max()) < 0.1  # nearly symmetric about 0
    assert torch.allclose(normal_float_code_book(4), book.double(), atol=1e-6)
    nf4 = SCHEMES["nf4"]
    weight = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    q = nf4.quantize(weight, 64)
    normalised = weight / q.scales.float()
    assert torch.equal(q.codes.long(), (normalised.unsqueeze(-1) - book).abs().argmin(-1))  # the nearest value
