"""Option checking shared by attacks, defenses, injections and configs: names, types, ranges at build
time, and the help text read from the option declarations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import pytest

from backdoorlab.analysis.runner import AnalysisConfig
from backdoorlab.attacks import get_attack
from backdoorlab.attacks.base import attack_options
from backdoorlab.defenses import get_defense, list_defenses
from backdoorlab.defenses.base import defense_info
from backdoorlab.errors import BackdoorLabError
from backdoorlab.injection import get_injection
from backdoorlab.options import OptionTypeError, build, coerce, describe, field_comments
from backdoorlab.training import TrainConfig


@dataclass
class Base:
    rate: float = 0.5  # share of rows
    seed: int = 0


@dataclass
class Toy(Base):
    rate: float = 0.25  # share of rows, overridden
    name: str | None = None  # a name
    words: list[str] = field(default_factory=lambda: ["a"])  # words to use
    layers: list[int] | None = None
    targets: str | list[str] = "all"
    flag: bool = False
    mode: Literal["fast", "slow"] = "fast"  # speed
    extra: dict = field(default_factory=dict)

    def helper(self) -> None:
        inner: int = 3  # not an option
        del inner


@pytest.mark.parametrize(("value", "hint", "expected"), [
    ("3", int, 3), ("3.0", int, 3), (4.0, int, 4), ("0.5", float, 0.5), (2, float, 2.0),
    ("yes", bool, True), ("False", bool, False), (0, bool, False), ("none", float | None, None), (None, int | None, None),
    ("none", str | None, "none"), ("cf", str, "cf"), ("a, b", list[str], ["a", "b"]), ('["a", "b"]', list[str], ["a", "b"]),
    ("", list[str], []), ("1,2", list[int] | None, [1, 2]), ("[1, 2]", list[int] | None, [1, 2]),
    ('["q", "v"]', str | list[str], ["q", "v"]), ("all-linear", str | list[str], "all-linear"),
    (["q"], str | list[str], ["q"]), ("slow", Literal["fast", "slow"], "slow"), ('{"a": 1}', dict, {"a": 1}),
])
def test_values_are_coerced_to_the_option_type(value, hint, expected) -> None:
    result = coerce(value, hint)
    assert result == expected and type(result) is type(expected)
    assert math.isnan(coerce("nan", float))  # a number: range checks belong to each class


@pytest.mark.parametrize(("value", "hint", "expected"), [
    ("abc", int, "an integer"), (2.5, int, "an integer"), (True, int, "an integer"), ("abc", float, "a number"),
    (False, float, "a number"), ("maybe", bool, "true or false"), (2, bool, "true or false"), (3, str, "a string"),
    ("abc", float | None, "a number or none"), ("1,x", list[int], "a list of integers"), (5, list[str], "a list of strings"),
    ("medium", Literal["fast", "slow"], "one of fast, slow"), ("[1", dict, "a JSON object"),
    (3, str | list[str], "a string or a list of strings"),
])
def test_values_of_the_wrong_type_say_what_was_expected(value, hint, expected) -> None:
    with pytest.raises(OptionTypeError) as error:
        coerce(value, hint)
    assert error.value.expected == expected


def test_build_rejects_unknown_names_and_names_option_type_and_value() -> None:
    toy = build(Toy, {"rate": "0.1", "layers": "3,4", "flag": "on", "targets": '["a"]'}, "toy")
    assert (toy.rate, toy.layers, toy.flag, toy.targets, toy.seed) == (0.1, [3, 4], True, ["a"], 0)
    with pytest.raises(BackdoorLabError, match=r"^toy has no option 'speed'; its options: rate, seed, name, words"):
        build(Toy, {"speed": 1}, "toy")
    with pytest.raises(BackdoorLabError, match=r"toy has no options 'a', 'b'"):
        build(Toy, {"a": 1, "b": 2}, "toy")
    with pytest.raises(BackdoorLabError, match=r"^toy, option seed: expected an integer, got 'abc'$"):
        build(Toy, {"seed": "abc"}, "toy")


def test_help_comes_from_the_declarations_along_the_class_hierarchy() -> None:
    assert field_comments(Toy) == {"rate": "share of rows, overridden", "name": "a name", "words": "words to use",
                                   "mode": "speed"}
    info = {o.name: o for o in describe(Toy)}
    assert info["seed"].help == "random seed"  # the shared text for an option without its own comment
    assert info["layers"].help == "" and info["layers"].type == "list[int] | None" and info["layers"].default is None
    assert info["words"].default == ["a"] and info["targets"].type == "str | list[str]"
    assert info["mode"].type == "'fast' | 'slow'" and info["rate"].default == 0.25


def test_every_option_of_every_defense_has_help_text() -> None:
    for name, _, defaults in list_defenses():
        info = defense_info(name)
        assert [o.name for o in info.options] == list(defaults)
        missing = [o.name for o in info.options if not o.help.strip()]
        assert not missing, f"defense {name!r}: options without help text: {missing}"
    onion = {o.name: o for o in defense_info("onion").options}
    assert onion["lm"].help == "packaged name or folder of a causal LM" and onion["threshold"].type == "float | None"


def test_a_defense_option_of_the_wrong_type_fails_when_built() -> None:
    with pytest.raises(BackdoorLabError, match=r"defense 'onion', option batch_size: expected an integer, got 'abc'"):
        get_defense("onion", batch_size="abc")
    with pytest.raises(BackdoorLabError, match=r"defense 'badllm-tg', option top_fraction: expected a number, got 'x'"):
        get_defense("badllm-tg", top_fraction="x")
    with pytest.raises(BackdoorLabError, match=r"defense 'rap' has no option 'words'; its options: .*word"):
        get_defense("rap", words="cf")
    defense = get_defense("muscle-lora", rank="4", scales="1,2", targets="query", align="false")
    assert (defense.rank, defense.scales, defense.targets, defense.align) == (4, [1.0, 2.0], ["query"], False)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("onion", {"threshold_percentile": "150"}, r"\[0, 100\]"), ("onion", {"threshold": "nan"}, "finite number"),
    ("rap", {"frr": 1.0}, r"frr must be a number in \(0, 1\)"), ("rap", {"min_drop": 0.4, "max_drop": 0.2}, "inverted"),
    ("muscle-lora", {"rank": 0}, "rank"), ("badacts", {"flagged": "drop"}, "flagged"),
    ("badllm-tg", {"variant": "magic"}, "variant must be one of"), ("badllm-tg", {"top_fraction": 2}, "top_fraction"),
    ("badllm-tg", {"identify_records": 1}, "identify_records must be at least 2"),
    ("head-ablation", {"top_fraction": 0}, "head-ablation: top_fraction"),
    ("backdoor-vector", {"direction": "sideways"}, "direction must be one of difference, triggered-mean"),
])
def test_out_of_range_defense_options_fail_when_built(name: str, options: dict, message: str) -> None:
    with pytest.raises(BackdoorLabError, match=message):
        get_defense(name, **options)


def test_an_attack_option_of_the_wrong_type_fails_with_a_clear_message() -> None:
    with pytest.raises(BackdoorLabError, match=r"attack 'badnets', option num_triggers: expected an integer, got 'two'"):
        get_attack("badnets", num_triggers="two")
    assert get_attack("badnets", num_triggers="2", words="cf, mn").options()["words"] == ["cf", "mn"]
    assert [o.name for o in attack_options("badnets")] == ["num_triggers", "position", "words"]


def test_a_training_config_option_of_the_wrong_type_fails_with_a_clear_message() -> None:
    with pytest.raises(BackdoorLabError, match=r"training config, option epochs: expected a number, got 'three'"):
        TrainConfig.from_dict({"epochs": "three"})
    with pytest.raises(BackdoorLabError, match=r"training config has no option 'lr'; its options: method, epochs"):
        TrainConfig.from_dict({"lr": 1e-3})
    config = TrainConfig.from_dict({"epochs": "2", "bf16": "true", "lora_targets": '["q_proj", "v_proj"]'})
    assert (config.epochs, config.bf16, config.lora_targets) == (2.0, True, ["q_proj", "v_proj"])


def test_analysis_and_injection_options_are_checked_the_same_way() -> None:
    with pytest.raises(BackdoorLabError, match=r"analysis config, option pairs: expected an integer, got 'many'"):
        AnalysisConfig.from_dict({"pairs": "many"})
    assert AnalysisConfig.from_dict({"layers": "1,3", "random_control": "no"}).layers == [1, 3]
    badedit = get_injection("badedit")
    with pytest.raises(BackdoorLabError, match=r"injection method 'badedit', option steps: expected an integer"):
        badedit.config({"steps": "x"})
    assert badedit.config({"layer": "none", "lr": "0.1"}).lr == 0.1
    assert {o.name for o in badedit.option_info()} >= {"layer", "steps", "lr"}
