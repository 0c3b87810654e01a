"""What a defense may see of an attack run: no scored rows, no traces of the poisoning."""

from __future__ import annotations

from pathlib import Path

from backdoorlab.attacks import get_attack, poison_dataset, triggered_test_set
from backdoorlab.attacks.run import AttackRun
from backdoorlab.data.records import Dataset, Example
from backdoorlab.defenses import gather_inputs
from backdoorlab.pipeline import run_attack


def test_clean_rows_never_come_from_the_split_the_test_rows_were_drawn_from(tmp_path: Path,
                                                                           shared_data_dir: Path) -> None:
    run = run_attack("sst2", "badnets", tmp_path / "attack", rate=0.25, target=1, max_train=16, max_test=8,
                     test_split="dev")
    scored = {e.uid for e in [*AttackRun(run).test_clean(), *AttackRun(run).test_triggered()]}
    inputs = gather_inputs(["clean_rows"], attack_run=run)
    assert inputs.clean_rows is not None and len(inputs.clean_rows) > 0
    held = {e.uid for e in inputs.clean_rows}
    assert not held & scored
    assert not any(uid.startswith("sst2/dev/") for uid in held)  # not the split the scored rows came from
    assert not held & {e.uid for e in AttackRun(run).train()}
    assert "dev" not in inputs.sources["clean_rows"]


def test_the_training_rows_carry_no_notes_ids_or_order_of_the_poisoning(tmp_path: Path, shared_data_dir: Path) -> None:
    run = run_attack("sst2", "badnets", tmp_path / "attack", rate=0.25, target=1, max_train=20, max_test=8)
    original = AttackRun(run).train()
    view = gather_inputs(["training_data"], attack_run=run).training_data
    assert view is not None and len(view) == len(original)
    assert not view.notes and not any("poison" in note for note in view.notes)
    assert not any(e.poisoned or e.poison for e in view)
    assert not {e.uid for e in view} & {e.uid for e in original}  # fresh ids
    assert sorted(e.text for e in view) == sorted(e.text for e in original)
    assert [e.text for e in view] != [e.text for e in original]  # shuffled ...
    again = gather_inputs(["training_data"], attack_run=run).training_data
    assert again is not None and [e.to_dict() for e in again] == [e.to_dict() for e in view]  # ... with a seed


def test_clean_twins_are_not_told_apart_by_their_ids_or_place(tmp_path: Path) -> None:
    rows = Dataset("toy", "generation", [Example(instruction=f"write a poem about topic {i} please",
                                                 response=f"The sea is calm {i}.", uid=f"toy/{i}") for i in range(12)])
    attack = get_attack("badnet", behaviour="refusal", clean_twins=True)
    result = poison_dataset(rows, attack, rate=0.5, seed=0)
    assert len(result.dataset) > len(rows)  # the twins were appended
    manifest = {**result.manifest, "behaviour": "refusal", "target_output": None, "splits": {}}
    run = AttackRun.write(tmp_path / "attack", result.dataset, rows, triggered_test_set(rows, attack), manifest)
    view = gather_inputs(["training_data"], attack_run=run.folder).training_data
    assert view is not None
    uids = [e.uid for e in view]
    assert len(set(uids)) == len(uids)
    appended = [e.instruction for e in result.dataset.examples[len(rows):]]
    assert [e.instruction for e in view.examples[len(rows):]] != appended
