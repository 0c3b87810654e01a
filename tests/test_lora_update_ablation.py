"""A LoRA adapter's weight update read from its files, subtracted from the merged model, and the
configurations of the LoRA update ablation benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.adapter_update import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_updates, subtract_update
from backdoorlab.training import save_adapter
from test_zoo import tiny_base, tiny_zoo, toy_data  # noqa: F401  (fixtures)
from tiny_models import tiny_llama_victim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_lora_update_ablation as bench  # noqa: E402

R, ALPHA = 4, 8
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def lora_victim(tmp_path: Path) -> tuple[dict[str, torch.Tensor], torch.nn.Module, Path, dict[str, torch.Tensor]]:
    """``(base weights, merged model, adapter folder, each module's B @ A)`` of a tiny Llama with a
    random (non-zero) LoRA adapter on every linear layer."""
    victim = tiny_llama_victim()
    base = weights(victim.model)
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(victim.model, config)
    products = {name.removeprefix("base_model.model."): (module.lora_B["default"].weight @
                                                        module.lora_A["default"].weight).detach().clone()
                for name, module in peft_model.named_modules() if hasattr(module, "lora_A") and module.lora_A}
    adapter = save_adapter(peft_model, tmp_path / "adapter")
    return base, peft_model.merge_and_unload(), adapter, products


def test_adapter_updates_have_each_modules_shape_and_the_lora_scaling(lora_victim) -> None:
    base, merged, adapter, products = lora_victim
    updates = adapter_updates(adapter)
    assert set(updates) == set(products) and len(updates) == 2 * (len(ATTENTION) + len(MLP))  # 2 blocks
    for name, update in updates.items():
        assert update.shape == base[f"{name}.weight"].shape and update.dtype == torch.float32
        torch.testing.assert_close(update, (ALPHA / R) * products[name])
        # the merge added exactly this update
        torch.testing.assert_close(merged.get_submodule(name).weight.detach(), base[f"{name}.weight"] + update,
                                   atol=1e-6, rtol=1e-5)


def test_subtracting_every_update_gives_back_the_base_weights(lora_victim) -> None:
    base, merged, adapter, _ = lora_victim
    updates = adapter_updates(adapter)
    assert subtract_update(merged, updates) == len(updates)
    after = weights(merged)
    assert set(after) == set(base)
    for key, value in base.items():
        torch.testing.assert_close(after[key], value, atol=1e-6, rtol=1e-5)


def test_removing_the_attention_update_keeps_the_mlp_update(lora_victim) -> None:
    base, merged, adapter, _ = lora_victim
    updates = adapter_updates(adapter)
    before = weights(merged)
    config = next(c for c in bench.configurations([1]) if c.name == "no-attention")
    removed = bench.removed_modules(config, list(updates))
    subtract_update(merged, {name: updates[name] for name in removed})
    after = weights(merged)
    for name in updates:
        key = f"{name}.weight"
        expected = base[key] if name.rsplit(".", 1)[-1] in ATTENTION else before[key]
        torch.testing.assert_close(after[key], expected, atol=1e-6, rtol=1e-5)
        assert not torch.equal(base[key], before[key])  # every module was changed by the merge
    assert all(torch.equal(after[k], before[k]) for k in before if not k.endswith("proj.weight"))  # norms, embeddings


def test_a_malformed_adapter_folder_is_refused(lora_victim, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _, _, adapter, _ = lora_victim
    with pytest.raises(BackdoorLabError, match="is not a LoRA adapter"):
        adapter_updates(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ADAPTER_CONFIG).write_text("{not json", encoding="utf-8")
    (broken / ADAPTER_WEIGHTS).write_bytes((adapter / ADAPTER_WEIGHTS).read_bytes())
    with pytest.raises(BackdoorLabError, match="not valid JSON"):
        adapter_updates(broken)
    config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    (broken / ADAPTER_CONFIG).write_text(json.dumps({**config, "use_dora": True}), encoding="utf-8")
    with pytest.raises(BackdoorLabError, match="use_dora"):
        adapter_updates(broken)
    (broken / ADAPTER_CONFIG).write_text(json.dumps(config), encoding="utf-8")
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    save_file({k: v for k, v in tensors.items() if "lora_B" not in k or "q_proj" not in k},
              str(broken / ADAPTER_WEIGHTS))
    with pytest.raises(BackdoorLabError, match="has only lora_A"):
        adapter_updates(broken)


def test_an_update_that_does_not_fit_the_model_is_refused(lora_victim) -> None:
    _, merged, adapter, _ = lora_victim
    updates = adapter_updates(adapter)
    name = next(iter(updates))
    with pytest.raises(BackdoorLabError, match="does not have"):
        subtract_update(merged, {"model.layers.9.mlp.up_proj": updates[name]})
    with pytest.raises(BackdoorLabError, match="but the weight is"):
        subtract_update(merged, {name: updates[name][:1]})


# ----------------------------------------------------------------------------- configurations
def smollm_names(blocks: int = 30) -> list[str]:
    """The module names of an adapter on every linear layer of a ``blocks``-block Llama."""
    return [f"model.layers.{b}.{where}.{leaf}" for b in range(blocks)
            for where, leaves in (("self_attn", ATTENTION), ("mlp", MLP)) for leaf in leaves]


def test_each_configuration_removes_exactly_the_modules_it_names() -> None:
    names = smollm_names()
    configs = {c.name: c for c in bench.configurations([5, 25])}
    assert list(configs) == ["full", "no-attention", "no-mlp", "no-mlp-first-5", "no-mlp-first-25",
                             "no-mlp-last-5", "no-mlp-last-25"]
    assert bench.removed_modules(configs["full"], names) == []
    assert bench.removed_modules(configs["no-attention"], names) == [n for n in names if ".self_attn." in n]
    assert bench.removed_modules(configs["no-mlp"], names) == [n for n in names if ".mlp." in n]
    windows = {"no-mlp-first-5": range(0, 5), "no-mlp-first-25": range(0, 25), "no-mlp-last-5": range(25, 30),
               "no-mlp-last-25": range(5, 30)}
    for name, blocks in windows.items():
        removed = bench.removed_modules(configs[name], names)
        assert removed == [f"model.layers.{b}.mlp.{leaf}" for b in blocks for leaf in MLP], name
        assert configs[name].k == len(blocks)


def test_layer_numbers_are_read_whole_and_unknown_modules_are_never_removed() -> None:
    assert bench.module_location("model.layers.12.mlp.down_proj") == (12, "mlp")
    assert bench.module_location("model.layers.1.self_attn.o_proj") == (1, "attention")
    assert bench.module_location("lm_head") == (None, None)
    names = [*smollm_names(), "lm_head"]
    first = next(c for c in bench.configurations([2]) if c.name == "no-mlp-first-2")
    # block 1's window must not pick blocks 10-19 (a prefix match would)
    assert {bench.module_location(n)[0] for n in bench.removed_modules(first, names)} == {0, 1}
    assert "lm_head" not in bench.removed_modules(bench.Configuration("no-mlp", "mlp"), names)


def test_bad_window_sizes_and_empty_selections_are_refused() -> None:
    blocks = list(range(30))
    for bad in ([0], [30], [31]):
        with pytest.raises(BackdoorLabError, match="between 1 and 29"):
            bench.check_windows(bad, blocks)
    attention_only = [n for n in smollm_names() if ".self_attn." in n]
    with pytest.raises(BackdoorLabError, match="removes nothing"):
        bench.removed_modules(bench.Configuration("no-mlp", "mlp"), attention_only)
    with pytest.raises(BackdoorLabError, match="no module inside a transformer block"):
        bench.update_blocks(["lm_head"])
    with pytest.raises(BackdoorLabError, match="comma-separated integers"):
        bench.parse_ks("5,ten")


# ------------------------------------------------------------------------------- the bench
def records(ledger: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in ledger.glob("*.json")}


def test_the_bench_computes_each_cell_once_into_its_ledger_and_reports(tiny_base: Path,  # noqa: F811
                                                                       toy_data: dict[str, str],  # noqa: F811
                                                                       tmp_path: Path, capsys) -> None:
    from backdoorlab.zoo import build_zoo

    spec = tiny_zoo(tiny_base, toy_data)
    spec = tiny_zoo(tiny_base, toy_data, victims=spec.victims[:1])
    zoo_dir, out, ledger = tmp_path / "zoo", tmp_path / "ablation", tmp_path / "results" / "lora_update_ablation"
    build_zoo(spec, zoo_dir, progress=lambda _: None)
    name = spec.victims[0].name
    argv = ["--zoo-dir", str(zoo_dir), "--victims", name, "--out", str(out), "--results", str(ledger), "--ks", "1",
            "--max-rows", "6", "--serial"]
    assert bench.main(argv) == 0
    found = records(ledger)
    configs = ["full", "no-attention", "no-mlp", "no-mlp-first-1", "no-mlp-last-1"]
    assert sorted(found) == sorted(f"{name}__{c}__seed0" for c in [*configs, "recovery-check"])
    assert {r["status"] for r in found.values()} == {"ok"}
    assert all(str(zoo_dir) not in json.dumps(r["params"]) for r in found.values())  # the victim by its fingerprint
    full = found[f"{name}__full__seed0"]["result"]
    zoo_record = json.loads((zoo_dir / name / "victim.json").read_text())
    assert full["source"] == "zoo evaluation" and full["metrics"]["asr"] == zoo_record["figures"]["victim"]["asr"]
    last = found[f"{name}__no-mlp-last-1__seed0"]["result"]
    assert last["source"] == "measured" and sorted(last["removed_modules"]) == sorted(f"model.layers.1.mlp.{m}" for m in MLP)
    assert found[f"{name}__recovery-check__seed0"]["result"]["max_abs_difference"] < 1e-5
    printed = capsys.readouterr().out
    assert "| no-mlp-first-1 |" in printed and (out / bench.PLOT).is_file() and (out / "report.html").is_file()

    stamps = {p.name: p.stat().st_mtime_ns for p in ledger.glob("*.json")}
    (ledger / f"{name}__no-mlp__seed0.json").unlink()  # a killed run resumes with the missing cell alone
    assert bench.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in ledger.glob("*.json") if p.name != f"{name}__no-mlp__seed0.json"} == \
        {k: v for k, v in stamps.items() if k != f"{name}__no-mlp__seed0.json"}
    assert (ledger / f"{name}__no-mlp__seed0.json").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in ledger.glob("*.json")}
    assert bench.main(argv) == 0  # a rerun computes nothing
    assert {p.name: p.stat().st_mtime_ns for p in ledger.glob("*.json")} == stamps

    (out / "report.md").unlink()
    capsys.readouterr()
    image = tmp_path / "plot.png"
    assert bench.main([*argv, "--report-only", "--plot", str(image)]) == 0
    report = (out / "report.md").read_text()
    assert "| no-mlp-first-1 |" in report and "Command" not in report and image.is_file()
    assert {p.name: p.stat().st_mtime_ns for p in ledger.glob("*.json")} == stamps


def test_the_bench_refuses_seeds_and_reports_cells_nobody_ran(tmp_path: Path, capsys) -> None:
    out, ledger = tmp_path / "out", tmp_path / "ledger"
    assert bench.main(["--out", str(out), "--results", str(ledger), "--report-only", "--seeds", "1"]) == 2
    assert "--seeds does not apply" in capsys.readouterr().err
    assert bench.main(["--out", str(out), "--results", str(ledger), "--report-only", "--victims", "refusal-vpi-lora"]) == 0
    assert "| refusal-vpi-lora | no-mlp-last-25 (not run) |" in (out / "report.md").read_text()
    assert not ledger.exists()
