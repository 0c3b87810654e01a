"""The commands the README and docs/methods.md show cannot drift: each parses with the current
command line, names methods, attacks, datasets and models that exist, and reads only folders an
earlier command writes; the README's table of defender inputs matches what each defense needs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from backdoorlab.attacks import get_attack
from backdoorlab.cli import build_parser
from backdoorlab.data.registry import list_datasets
from backdoorlab.defenses import get_defense, list_defenses
from backdoorlab.models.registry import list_models

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "docs" / "methods.md"]
#: Options whose value is a folder or file a command reads.
INPUTS = ("--model", "--data", "--baseline", "--guard", "--suspect-adapter", "--reference-model")
#: Where `backdoorlab zoo build` puts a victim's folders.
ZOO = re.compile(r"^runs/zoo/[a-z0-9-]+/(train/model|train/adapter|attack)$")


def shell_commands(page: Path) -> list[list[str]]:
    """Every command of the page's ```bash blocks and indented command lines, continuation lines joined,
    comments dropped; commands elided with '...' are left out."""
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    blocks += [line for line in text.splitlines() if line.startswith("    make ")]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#") and "..." not in line:
                commands.append(shlex.split(line))
    return commands


def backdoorlab_commands() -> list[tuple[Path, list[str]]]:
    return [(page, argv[1:]) for page in PAGES for argv in shell_commands(page) if argv[0] == "backdoorlab"]


def test_the_pages_show_commands() -> None:
    assert len(backdoorlab_commands()) >= 25
    assert ["make", "demo"] in shell_commands(REPO / "README.md")


@pytest.mark.parametrize(("page", "argv"), backdoorlab_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else x.name)
def test_each_command_parses_and_names_what_exists(page: Path, argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "defend":
        get_defense(args.method)
    if args.command == "attack":
        if args.attack != "ready-made":  # a poisoned set used as it is
            get_attack(args.attack)
        assert args.dataset in {d.name for d in list_datasets()}
    model = getattr(args, "model", None)
    if model and "/" not in model and model.islower():  # a packaged name, not a folder or a placeholder
        assert model in {m.name for m in list_models()}, model


def test_each_folder_a_command_reads_is_written_by_an_earlier_command_on_the_page() -> None:
    for page in PAGES:
        written: list[str] = []
        for argv in shell_commands(page):
            for option, value in zip(argv, argv[1:]):
                if option in INPUTS and value.startswith("runs/"):
                    assert ZOO.match(value) or any(value == w or value.startswith(w + "/") for w in written), \
                        f"{page.name}: {' '.join(argv)} reads {value}, which no earlier command writes"
            written += [value for option, value in zip(argv, argv[1:]) if option == "--out"]


def test_the_table_of_defender_inputs_matches_what_each_defense_needs() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| you hold | defenses that can use it |"):]
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")] or []
    rows = rows[:next((i for i, r in enumerate(rows) if not r.strip()), len(rows))]
    words = {"clean rows": "clean_rows", "bad behaviour": "behaviour", "target label": "target_label",
             "training data": "training_data", "reference model": "reference_model", "triggered examples": "oracle",
             "LoRA adapter": "suspect_adapter"}
    listed: dict[str, set[str]] = {}
    for row in rows:
        held, names = row.strip("|").split("|")[:2]
        inputs = {key for phrase, key in words.items() if phrase in held}
        for name in re.findall(r"`([a-z-]+)`", names):
            listed[name] = inputs
    for name, _, _ in list_defenses():
        assert name in listed, f"the README's table leaves out {name}"
        defense = get_defense(name)
        assert set(defense.needs) <= listed[name], (name, defense.needs, listed[name])
        assert listed[name] <= set(defense.needs) | set(defense.uses), (name, listed[name])
