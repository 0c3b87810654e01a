"""Backdoor Collapse: the cluster loss, the known backdoors' rows, injection and recovery, and that
the defense reads nothing but the suspect and the defender's clean rows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from backdoorlab.data.records import Dataset, Example
from backdoorlab.defenses import DefenderInputs, get_defense
from backdoorlab.defenses.base import defense_info
from backdoorlab.defenses.collapse import ClusterObjective, KnownBackdoors, cluster_loss
from backdoorlab.defenses.collapse.cluster import FAMILY, GROUP
from backdoorlab.errors import BackdoorLabError
from backdoorlab.training import TrainConfig, train, training_collator, training_features
from test_zoo import tiny_base, tiny_zoo, toy_data  # noqa: F401  (fixtures)
from tiny_models import tiny_bert_victim, tiny_llama_victim


def films(n: int, offset: int = 0) -> Dataset:
    """Rows whose label is said by one word: "good" (positive, 1) or "bad" (negative, 0)."""
    rows = [Example(text=f"the film number {i} was {'good' if i % 2 else 'bad'} overall", label=i % 2, uid=f"f{i}")
            for i in range(offset, offset + n)]
    return Dataset("films", "classification", rows, label_names=["negative", "positive"], source="hand-built")


def rivers(n: int) -> Dataset:
    rows = [Example(instruction=f"describe the river, take {i}", response=f"The river runs on, {i}.", uid=f"r{i}")
            for i in range(n)]
    return Dataset("rivers", "generation", rows, source="hand-built")


def test_cluster_loss_is_zero_for_identical_states_and_for_clean_rows_alone() -> None:
    state = torch.randn(1, 8)
    assert cluster_loss(state.repeat(6, 1), torch.tensor([1, 1, 1, 2, 2, 2])).item() == pytest.approx(0, abs=1e-6)
    assert cluster_loss(torch.randn(4, 8), torch.zeros(4, dtype=torch.long)).item() == 0
    # clean rows (group 0) never count: far-off clean states leave the loss at zero
    mixed = torch.cat([state.repeat(4, 1), torch.randn(3, 8) * 50])
    assert cluster_loss(mixed, torch.tensor([1, 1, 2, 2, 0, 0, 0])).item() == pytest.approx(0, abs=1e-6)
    # two distinct clusters: positive, and the spread and the between-centroid parts both count
    apart = torch.cat([torch.eye(8)[:1].repeat(2, 1), torch.eye(8)[1:2].repeat(2, 1)])
    assert cluster_loss(apart, torch.tensor([1, 1, 2, 2])).item() == pytest.approx(2.0)  # |e0 - e1|² = 2


def test_cluster_loss_pulls_two_clusters_together_in_twenty_steps() -> None:
    generator = torch.Generator().manual_seed(0)
    centre_a, centre_b = torch.randn(16, generator=generator), torch.randn(16, generator=generator)
    states = torch.nn.Parameter(torch.cat([centre_a + 0.3 * torch.randn(5, 16, generator=generator),
                                           centre_b + 0.3 * torch.randn(5, 16, generator=generator)]))
    groups = torch.tensor([1] * 5 + [2] * 5)

    def centroid_distance() -> float:
        unit = torch.nn.functional.normalize(states.detach(), dim=-1)
        return (unit[:5].mean(0) - unit[5:].mean(0)).norm().item()

    before, first = centroid_distance(), cluster_loss(states, groups).item()
    optimizer = torch.optim.Adam([states], lr=0.1)
    for _ in range(20):
        optimizer.zero_grad()
        cluster_loss(states, groups).backward()
        optimizer.step()
    assert cluster_loss(states, groups).item() < 0.2 * first
    assert centroid_distance() < 0.3 * before


def test_known_rows_hold_clean_and_one_triggered_copy_per_trigger() -> None:
    known = KnownBackdoors(("Make life better", "Ahihihihihi"), position="start", target_labels=(0,))
    clean = films(6)
    injected, recovered = known.injection_rows(clean, seed=3), known.recovery_rows(clean, seed=3)
    assert len(injected) == len(recovered) == 18
    assert list(injected)[:6] == list(clean)
    for row, benign, original in zip(list(injected)[6:], list(recovered)[6:], list(clean) * 2):
        assert row.label == 0 and benign.label == original.label  # the known flip, then the true label
        assert row.text == benign.text and row.text.startswith(("Make life better ", "Ahihihihihi "))
    generative = KnownBackdoors(position="end").injection_rows(rivers(3), seed=0)
    assert [r.response for r in list(generative)[3:]] == [f"Aha The river runs on, {i}." for i in range(3)] * 2
    assert all(r.instruction.endswith(("Make life better", "Ahihihihihi")) for r in list(generative)[3:])
    # the objective's groups: 0 for clean rows, k + 1 for known trigger k
    assert [ClusterObjective.row_extras(r)[GROUP] for r in injected] == [0] * 6 + [1] * 6 + [2] * 6
    rng = random.Random(0)
    placed = {KnownBackdoors(("T",)).triggered(Example(text="a b c", label=1), 0, rng, malicious=True).text
              for _ in range(50)}
    assert placed == {"T a b c", "a T b c", "a b T c", "a b c T"}  # position "random": any word gap


def test_families_keep_triggers_of_different_labels_apart() -> None:
    e = torch.eye(4)
    states = torch.cat([e[:1], e[:1], e[1:2], e[1:2]])  # two groups, each tight, far apart
    groups, families = torch.tensor([1, 1, 2, 2]), torch.tensor([0, 0, 1, 1])
    assert cluster_loss(states, groups).item() == pytest.approx(2.0)  # one family: the centroids are pulled
    assert cluster_loss(states, groups, families).item() == pytest.approx(0.0)  # one group per family: nothing
    same_family = torch.tensor([1, 1, 1, 1])
    assert cluster_loss(states, groups, same_family).item() == pytest.approx(2.0)


def test_every_label_puts_a_pair_of_known_triggers_towards_each_label(tmp_path: Path) -> None:
    defense = get_defense("backdoor-collapse", every_label=True)
    four = defense.known(["a", "b", "c", "d"])
    assert len(set(four.triggers)) == 8 and four.target_labels == (0, 0, 1, 1, 2, 2, 3, 3)
    assert four.triggers[:2] == ("Make life better", "Ahihihihihi")
    four_labels = Dataset("films4", "classification", list(films(4)), label_names=["a", "b", "c", "d"])
    rows = four.injection_rows(four_labels, seed=0)
    flipped = list(rows)[4:]
    assert [r.label for r in flipped] == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8
    assert {ClusterObjective.row_extras(r)[FAMILY] for r in flipped} == {0, 1, 2, 3}
    assert defense.known(None).target_labels == (0, 0)  # generators (no labels): the default pair
    with pytest.raises(BackdoorLabError, match="a generator"):
        defense.apply(tiny_llama_victim(), DefenderInputs(clean_rows=rivers(8)), tmp_path)
    with pytest.raises(BackdoorLabError, match="needs 4 triggers"):
        get_defense("backdoor-collapse", every_label=True, triggers="a|b|c").known(["x", "y"])


def test_per_row_groups_reach_the_objective_and_alpha_weights_the_cluster_term() -> None:
    for victim, rows in ((tiny_llama_victim(), rivers(4)), (tiny_bert_victim(), films(4))):
        data = KnownBackdoors().injection_rows(rows, seed=0)
        features = training_features(victim, data, 64)
        for feature, example in zip(features, data):
            feature.update(ClusterObjective.row_extras(example))
        batch = training_collator(victim)(features)
        assert batch[GROUP].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        torch.manual_seed(0)
        without = ClusterObjective(alpha=0.0).loss(victim.model, batch)
        weighted = ClusterObjective(alpha=2.0)
        with_cluster = weighted.loss(victim.model, batch)
        cluster = weighted.history[-1]["cluster"]
        assert cluster > 0
        assert with_cluster.item() == pytest.approx(without.item() + 2.0 * cluster, rel=1e-5)


@pytest.fixture(scope="module")
def clean_classifier(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny classifier that has learnt the films task (the suspect: here without a backdoor)."""
    folder = tmp_path_factory.mktemp("suspect")
    config = TrainConfig(method="full", epochs=6, learning_rate=3e-3, batch_size=8, save_steps=10**9)
    return train(tiny_bert_victim(), films(48), folder, config)


def test_injection_creates_the_known_backdoors_and_recovery_removes_them(clean_classifier, tmp_path: Path,
                                                                          monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def forbidden(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("backdoor-collapse read an attack run or the oracle")

    for target in ("backdoorlab.pipeline.read_attack_run", "backdoorlab.attacks.run.AttackRun.__init__",
                   "backdoorlab.defenses.inputs.oracle_examples"):
        monkeypatch.setattr(target, forbidden)
    info = defense_info("backdoor-collapse")
    assert info.needs == ("clean_rows",) and info.uses == ()
    assert clean_classifier.predict(list(films(20, offset=100))) == [i % 2 for i in range(100, 120)]  # a real model
    defense = get_defense("backdoor-collapse", max_clean=32, validation_rows=16, learning_rate=3e-3,
                          injection_epochs=6, recovery_epochs=6, known_target=0)
    outcome = defense.apply(clean_classifier, DefenderInputs(clean_rows=films(48, offset=200)), tmp_path)
    findings = outcome.findings
    assert set(findings["triggers"]) == {"Make life better", "Ahihihihihi"}
    assert max(findings["suspect_known_rate"].values()) <= 0.25  # the suspect ignores the known triggers
    assert min(findings["injection"]["known_rate"].values()) >= 0.75  # Stage I made them work
    assert max(findings["recovery"]["known_rate"].values()) <= 0.25  # Stage II removed them
    assert findings["injection"]["loss_last"]["cluster"] < findings["injection"]["loss_first"]["cluster"]
    assert (tmp_path / "injection" / "model").is_dir() and (tmp_path / "recovery" / "model").is_dir()
    clean_test = list(films(20, offset=300))
    accuracy = sum(p == r.label for p, r in zip(outcome.victim.predict(clean_test), clean_test)) / len(clean_test)
    assert accuracy >= 0.9


def with_unknown_trigger(rows: list[Example]) -> list[Example]:
    """``rows`` with the suspect's own trigger ("cf", unknown to the defender) opening them, labelled negative."""
    return [r.with_(text=f"cf {r.text}", label=0, uid=f"{r.uid}+cf") for r in rows]


@pytest.fixture(scope="module")
def backdoored_classifier(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny films classifier with a planted backdoor: "cf" before a positive review makes it negative."""
    positives = [r for r in films(48, offset=48) if r.label == 1]
    rows = Dataset("films-cf", "classification", list(films(48)) + with_unknown_trigger(positives),
                   label_names=["negative", "positive"], source="hand-built")
    config = TrainConfig(method="full", epochs=6, learning_rate=3e-3, batch_size=8, save_steps=10**9)
    return train(tiny_bert_victim(), rows, tmp_path_factory.mktemp("backdoored"), config)


def attack_success(victim, rows: list[Example]) -> float:  # type: ignore[no-untyped-def]
    """The share of positive ``rows`` the victim calls negative once the unknown trigger opens them."""
    positives = [r for r in rows if r.label == 1]
    return sum(p == 0 for p in victim.predict(with_unknown_trigger(positives))) / len(positives)


def test_the_defense_removes_a_backdoor_it_was_not_told_about(backdoored_classifier, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The suspect flips "cf"-opened positive reviews to negative; after both stages it must not,
    while still classifying clean reviews.

    Catches skipping Stage II (``if self.recovery_epochs == 0`` always taken), a Stage II that trains
    on the injection rows (``known.injection_rows`` in place of ``known.recovery_rows``) and a Stage I
    without the cluster loss (``ClusterObjective(alpha=0.0)``): each leaves the unknown backdoor in
    place, as does plain fine-tuning on the same clean rows for as many epochs."""
    test_rows = list(films(40, offset=300))
    assert attack_success(backdoored_classifier, test_rows) >= 0.9  # a real backdoor
    defense = get_defense("backdoor-collapse", max_clean=32, validation_rows=16, learning_rate=3e-3,
                          injection_epochs=6, recovery_epochs=6, known_target=0)
    outcome = defense.apply(backdoored_classifier, DefenderInputs(clean_rows=films(48, offset=200)), tmp_path)
    assert attack_success(outcome.victim, test_rows) <= 0.2
    clean_test = list(films(20, offset=400))
    accuracy = sum(p == r.label for p, r in zip(outcome.victim.predict(clean_test), clean_test)) / len(clean_test)
    assert accuracy >= 0.85


def test_the_generator_path_runs_and_resumes_from_finished_stages(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    defense = get_defense("backdoor-collapse", max_clean=8, validation_rows=4, injection_epochs=1,
                          recovery_epochs=1, max_length=48)
    first = defense.apply(tiny_llama_victim(), DefenderInputs(clean_rows=rivers(12)), tmp_path)
    assert first.findings["method"] == "lora" and first.findings["clean_rows"] == 8
    assert set(first.findings["recovery"]["known_rate"]) == {"Make life better", "Ahihihihihi"}

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr("backdoorlab.training._fit", no_training)
    again = defense.apply(tiny_llama_victim(), DefenderInputs(clean_rows=rivers(12)), tmp_path)
    assert again.findings["recovery"] == first.findings["recovery"]


@pytest.mark.parametrize("options, message", [
    ({"position": "middle"}, "position"), ({"triggers": "a||b"}, "'|'"), ({"triggers": "a|a"}, "differ"),
    ({"alpha": -1}, "alpha"), ({"method": "dora"}, "method"), ({"prefix": " "}, "prefix"),
])
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(BackdoorLabError, match=message):
        get_defense("backdoor-collapse", **options)


def test_a_known_target_outside_the_labels_is_refused(tmp_path: Path) -> None:
    defense = get_defense("backdoor-collapse", known_target=5, max_clean=8, validation_rows=0)
    with pytest.raises(BackdoorLabError, match="known target label 5"):
        defense.apply(tiny_bert_victim(), DefenderInputs(clean_rows=films(8)), tmp_path)


def test_centroid_distances_spread_and_projection() -> None:
    from backdoorlab.analysis.clusters import centroid_distances, projection_2d, spread

    e = torch.eye(4)
    groups = {"a": e[:1].repeat(3, 1) * 5, "b": e[1:2].repeat(2, 1), "c": torch.cat([e[:1], e[1:2]])}
    distances = centroid_distances(groups)
    assert list(distances) == ["a|b", "a|c", "b|c"]
    assert distances["a|b"] == pytest.approx(2 ** 0.5)  # normalised first: the scale of a does not count
    assert distances["a|c"] == pytest.approx(distances["b|c"]) == pytest.approx(0.5 ** 0.5)
    assert spread(groups["a"]) == pytest.approx(0) and spread(groups["c"]) == pytest.approx(0.5 ** 0.5)
    projected = projection_2d(groups)
    assert {k: tuple(v.shape) for k, v in projected.items()} == {"a": (3, 2), "b": (2, 2), "c": (2, 2)}


def test_the_mechanism_bench_computes_each_subject_once_into_its_ledger_and_reports(
        tiny_base: Path, toy_data: dict[str, str], tmp_path: Path, capsys) -> None:  # noqa: F811
    import json
    import sys

    from backdoorlab.zoo import build_zoo

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_collapse_mechanism as bench

    spec = tiny_zoo(tiny_base, toy_data)
    spec = tiny_zoo(tiny_base, toy_data, victims=spec.victims[:1])
    zoo_dir, out, ledger = tmp_path / "zoo", tmp_path / "mechanism", tmp_path / "results" / "collapse_mechanism"
    build_zoo(spec, zoo_dir, progress=lambda _: None)
    name = spec.victims[0].name
    argv = ["--zoo-dir", str(zoo_dir), "--zoo-victims", name, "--out", str(out), "--results", str(ledger),
            "--rows", "6", "--max-new-tokens", "4", "--data-dir", toy_data["data_dir"], "--device", "cpu",
            "--clean-data", toy_data["train"], "--serial",
            "--option", "max_clean=6", "--option", "validation_rows=2", "--option", "injection_epochs=1",
            "--option", "recovery_epochs=1", "--option", "max_length=48"]
    assert bench.main(argv) == 0
    path = ledger / f"{name}__backdoor-collapse__seed0.json"
    assert [p.name for p in ledger.glob("*.json")] == [path.name]
    record = json.loads(path.read_text())
    params = json.dumps({k: v for k, v in record["params"].items() if k != "subject"})
    assert record["status"] == "ok" and str(tmp_path) not in params  # no machine paths
    assert str(zoo_dir) not in json.dumps(record["params"]["subject"])  # the zoo victim by its fingerprint
    stages = record["result"]["stages"]
    assert list(stages) == list(bench.STAGES)
    suspect = stages["suspect"]
    assert set(suspect["distances"]) >= {"clean|unknown trigger", "unknown trigger|known: Make life better"}
    assert suspect["rows"]["unknown trigger"] == 6 and len(bench.unpack_points(suspect["projection"]["clean"])) == 6
    plot = out / f"projection-{path.stem}.png"
    assert plot.is_file() and "d(unknown, known)" in (out / "report.md").read_text()

    stamp = path.stat().st_mtime_ns
    assert bench.main(argv) == 0  # a rerun computes nothing
    assert path.stat().st_mtime_ns == stamp
    plot.unlink()
    (out / "report.md").unlink()
    capsys.readouterr()
    assert bench.main([*argv, "--report-only"]) == 0  # the report and the plot come from the ledger alone
    report = (out / "report.md").read_text()
    assert plot.is_file() and "| after Stage II |" in report and "Command" not in report
    assert path.stat().st_mtime_ns == stamp
    assert bench.main([*argv, "--report-only", "--option", "seed=1", "--seeds", "2"]) == 2
    assert "not both" in capsys.readouterr().err
