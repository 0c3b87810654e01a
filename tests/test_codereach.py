"""The statement-level code digest: which edits stale a result and which leave it current."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from backdoorlab.codeversion import PACKAGE_ROOT, code_digest
from backdoorlab.codereach import reach_of

FILES = {
    "__init__.py": "",
    "defenses/__init__.py": "from . import alpha  # register\nfrom .base import get\n",
    "defenses/base.py": """
        _REGISTRY = {}

        def register(cls):
            _REGISTRY[cls.__name__] = cls
            return cls

        def get(name):
            return _REGISTRY[name]
    """,
    "defenses/alpha/__init__.py": "from .defense import Alpha\n",
    "defenses/alpha/defense.py": """
        from ..base import register

        @register
        class Alpha:
            def run(self):
                return 1
    """,
    "util.py": """
        import json

        SCALE = 2
        UNUSED = 3

        def used(x):
            return helper(x) * SCALE

        def helper(x):
            return x

        def unused(x):
            return x - 1

        def dumps(x):
            return json.dumps(x)
    """,
    "tools.py": """
        from . import util

        def via_alias(x):
            return util.used(x)

        def bare(x):
            return getattr(util, "unused")(x)

        def local(x):
            from .util import dumps
            return dumps(x)

        def cached(x):
            global _CACHE
            _CACHE = x
            return x

        def reader():
            return _CACHE
    """,
    "consumer.py": """
        from .tools import via_alias

        def main():
            return via_alias(1) + _CACHE

        _CACHE = 0
    """,
}


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    root = tmp_path / "backdoorlab"
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _digest(root: Path, *roots: str) -> str:
    return code_digest(list(roots), root=root)


@pytest.mark.parametrize("old, new, counts", [
    ("return x - 1", "return x - 2", False),          # a function nothing reached calls
    ("UNUSED = 3", "UNUSED = 4", False),               # a constant nothing reads
    ("import json\n", "import json\nimport csv\n", False),  # an import nothing reached uses
    ("return x\n", "return x + 1\n", True),            # a helper of a reached function
    ("SCALE = 2", "SCALE = 3", True),                  # a constant a reached function reads
])
def test_only_edits_to_reached_statements_count(package: Path, old: str, new: str, counts: bool) -> None:
    before = _digest(package, "backdoorlab.consumer")
    _edit(package / "util.py", old, new)
    assert (_digest(package, "backdoorlab.consumer") != before) is counts


def test_adding_and_reordering_definitions_leaves_the_digest(package: Path) -> None:
    before = _digest(package, "backdoorlab.consumer")
    util = package / "util.py"
    util.write_text(util.read_text() + "\n\ndef brand_new(y):\n    return y\n")
    _edit(util, "SCALE = 2\n", "")
    util.write_text("SCALE = 2\n" + util.read_text())
    assert _digest(package, "backdoorlab.consumer") == before


def test_a_new_binding_that_shadows_a_used_name_counts(package: Path) -> None:
    before = _digest(package, "backdoorlab.consumer")
    util = package / "util.py"
    util.write_text(util.read_text() + "\n\ndef helper(x):\n    return -x\n")
    assert _digest(package, "backdoorlab.consumer") != before


def test_a_module_used_bare_counts_whole(package: Path) -> None:
    before = _digest(package, "backdoorlab.tools")
    _edit(package / "util.py", "return x - 1", "return x - 2")
    assert _digest(package, "backdoorlab.tools") != before  # getattr(util, ...) may call anything in it


def test_function_local_imports_and_globals_are_followed(package: Path, tmp_path: Path) -> None:
    script = tmp_path / "bench.py"
    script.write_text("from backdoorlab.tools import local, reader\n\n\ndef cell():\n    return local(1) + reader()\n")
    entry = f"{script}::cell"
    before = code_digest([entry], root=package)
    _edit(package / "util.py", "return json.dumps(x)", "return json.dumps(x, sort_keys=True)")
    assert code_digest([entry], root=package) != before
    before = code_digest([entry], root=package), _digest(package, "backdoorlab.consumer")
    _edit(package / "tools.py", "_CACHE = x", "_CACHE = x + 1")  # reader() reads the _CACHE that cached() binds
    assert code_digest([entry], root=package) != before[0]
    assert _digest(package, "backdoorlab.consumer") == before[1]  # consumer's own _CACHE is another module's name
    reach = reach_of(["backdoorlab.tools"], root=package)
    assert "backdoorlab.util" in reach.kept


def test_registration_runs_on_import_and_the_registry_pulls_no_method(package: Path) -> None:
    own = _digest(package, "backdoorlab.defenses.base")
    _edit(package / "defenses" / "alpha" / "defense.py", "return 1", "return 2")
    assert _digest(package, "backdoorlab.defenses.base") == own  # the registry's import is not this root's code
    named = code_digest(["backdoorlab.defenses.base"], methods=["alpha"], root=package)
    _edit(package / "defenses" / "alpha" / "defense.py", "return 2", "return 3")
    assert code_digest(["backdoorlab.defenses.base"], methods=["alpha"], root=package) != named
    reach = reach_of(["backdoorlab.defenses.base"], methods=["alpha"], root=package)
    assert reach.kept["backdoorlab.defenses.alpha.defense"]  # the decorated class registers itself on import


def test_the_shipped_package_narrows_a_table_cell(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_badllm_tg.py"
    reach = reach_of([f"{script}::apply_defense"], methods=["badllm_tg"], root=PACKAGE_ROOT)
    architecture = reach.sources["backdoorlab.models.architecture"]
    kept = reach.kept["backdoorlab.models.architecture"]
    assert 0 < len(kept) < len(architecture.statements)
    assert not any(key.startswith("backdoorlab.defenses.onion") for key in reach.kept)
