"""The version of the code behind a cached result: a hash of the source it runs.

A result is current only if the code that computed it is unchanged, so every fingerprint carries
:func:`code_digest` of the modules its result depends on. Its current form (``reach``,
:mod:`backdoorlab.codereach`) hashes only the top-level statements the roots can run, following
names from module to module; the rules below on methods, scripts and bookkeeping apply to it as
they do to the earlier ``files`` forms, described here, which records written before it are
checked against.

The ``files`` form covers each named module and,
transitively, every ``backdoorlab`` module it imports (function-local imports included), read
statically from the source. It hashes each file's syntax tree, so comments, docstrings, blank
lines, formatting and where an import statement sits (top of the file or inside a function) do not
count; any other edit does.

Defense methods are kept apart: each package under ``backdoorlab/defenses/`` other than
``shared`` is one method, and the registry that imports them all (``defenses/__init__`` registers
every method) does not pull a method into a digest. A method's code counts only where a root lies
in its package, where ``methods`` names it (code that picks a method at run time, such as a
benchmark cell, names the ones it runs), or where other counted code imports it (a method built on
another; the scan's use of BadLLM-TG's label screening);
``methods=None`` counts every method. Editing one defense therefore makes stale exactly the
results that ran it.

A root may also be one function of a script, ``path/to/script.py::name`` (how a benchmark names
its cell function): only the script's top-level statements that ``name`` reaches count (the
definitions and constants it uses, transitively, and the imports they name), with every
top-level statement that binds no name; the script's other functions (its tables, its command
line, other grids' cells) do not. Editing a report function leaves every cell current.

The :data:`BOOKKEEPING` modules keep, name and show results but compute none of their figures
(the cache keys, this digest, atomic writes, the ledger's records, tables and errors); they and
what only they import are left out, so reorganising them leaves every result current.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

from .errors import BackdoorLabError

PACKAGE = "backdoorlab"
#: Separates a script from one of its functions in a root (``bench.py::apply_defense``).
ENTRY_SEPARATOR = "::"
PACKAGE_ROOT = Path(__file__).resolve().parent
_METHODS_PARENT = "defenses"
#: The package that imports every method to register it (``defenses/__init__``).
_REGISTRY = f"{PACKAGE}.{_METHODS_PARENT}"
_NOT_METHODS = frozenset({"shared"})
#: The digest's forms, newest first (:func:`code_digest`).
CODE_FORMS = ("reach", "files", "files-legacy")
CURRENT_FORM = CODE_FORMS[0]
#: Modules that record, key, write or display results without computing any figure in them.
BOOKKEEPING = frozenset(f"{PACKAGE}.{name}" for name in (
    "codeversion", "fingerprint", "reuse", "fileio", "errors", "console", "bench.store", "bench.report",
    "bench.options", "codereach"))


def method_packages(root: Path = PACKAGE_ROOT) -> frozenset[str]:
    """The module names of the defense method packages (``backdoorlab.defenses.<method>``)."""
    parent = root / _METHODS_PARENT
    return frozenset(f"{PACKAGE}.{_METHODS_PARENT}.{p.name}" for p in parent.iterdir()
                     if (p / "__init__.py").is_file() and p.name not in _NOT_METHODS)


def method_of(module: str, methods: Iterable[str]) -> str | None:
    """The method package ``module`` belongs to, if any."""
    return next((m for m in methods if module == m or module.startswith(m + ".")), None)


def module_file(module: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The source file of ``backdoorlab.x.y`` (a module or a package's ``__init__``), if it exists."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    parts = module.split(".")[1:]
    base = root.joinpath(*parts) if parts else root
    for candidate in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str | None, root: Path = PACKAGE_ROOT) -> frozenset[str]:
    """The ``backdoorlab`` modules that the source at ``path`` imports anywhere in its body.

    ``module`` is the file's own module name (needed to resolve relative imports; ``None`` for a
    script outside the package). ``from pkg import name`` counts ``pkg.name`` when that is a module
    and ``pkg`` otherwise. Cached while the file is unchanged."""
    stat = path.stat()
    return _imported_modules(path, module, root, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _imported_modules(path: Path, module: str | None, root: Path, size: int, mtime: int) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return _modules_in(tree, module, path.name == "__init__.py", root)


def _modules_in(tree: ast.AST, module: str | None, is_package: bool, root: Path) -> frozenset[str]:
    """The ``backdoorlab`` modules imported anywhere under ``tree``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            if base is None:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if module_file(submodule, root) is not None else base)
    return frozenset(name for name in found if module_file(name, root) is not None)


def _absolute(node: ast.ImportFrom, module: str | None, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    if module is None:
        return None
    parts = module.split(".")
    package = parts if is_package else parts[:-1]
    if node.level - 1 > len(package):
        return None
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def source_text(path: Path, registered: frozenset[str] = frozenset()) -> str:
    """What the file's behaviour depends on: its syntax tree without docstrings, with its import
    statements (wherever they sit) listed once each, sorted, after the rest. ``registered``: names of
    method packages whose relative import (``from . import onion``, for registration) is left out."""
    return _tree_text(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), registered)


def _tree_text(tree: ast.Module, registered: frozenset[str] = frozenset()) -> str:
    imports: set[str] = set()
    _strip(tree, imports, registered)
    return ast.dump(tree, annotate_fields=False) + "\n" + "\n".join(sorted(imports))


def split_entry(item: str | Path) -> tuple[Path, str | None]:
    """``(script, function)`` of a root ``script.py::function``; ``(script, None)`` for a plain path."""
    text = str(item)
    script, sep, function = text.rpartition(ENTRY_SEPARATOR)
    if sep and script.endswith(".py") and function.isidentifier():
        return Path(script), function
    return Path(text), None


def entry_tree(path: Path, function: str) -> ast.Module:
    """The part of the script at ``path`` that ``function`` depends on (module docstring): its
    top-level statements that bind a name ``function`` reaches, and those that bind none (the
    ``if __name__ == "__main__"`` block and the script's docstring excepted), in file order."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    binders: dict[str, list[int]] = {}
    always: list[int] = []
    for index, statement in enumerate(tree.body):
        if _is_main_guard(statement) or (index == 0 and _is_docstring(statement)):
            continue
        names = _bound_names(statement)
        for name in names:
            binders.setdefault(name, []).append(index)
        if not names:
            always.append(index)
    if function not in binders:
        raise BackdoorLabError(f"cannot hash the code of {path}{ENTRY_SEPARATOR}{function}: the script defines no "
                               f"top-level {function!r}")
    kept = set(always)
    queue = [function, *(name for i in always for name in _used_names(tree.body[i]))]
    seen: set[str] = set()
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        for index in binders.get(name, []):
            if index not in kept:
                kept.add(index)
                queue.extend(_used_names(tree.body[index]))
    return ast.Module(body=[tree.body[i] for i in sorted(kept)], type_ignores=[])


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
        and isinstance(statement.value.value, str)


def _is_main_guard(statement: ast.stmt) -> bool:
    test = getattr(statement, "test", None)
    return isinstance(statement, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) \
        and test.left.id == "__name__"


def _bound_names(statement: ast.stmt) -> set[str]:
    """The module-level names a top-level statement binds."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {statement.name}
    names: set[str] = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _used_names(statement: ast.stmt) -> set[str]:
    """Every name a statement reads, in its nested functions too."""
    return {node.id for node in ast.walk(statement) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


@functools.lru_cache(maxsize=512)
def _entry(path: Path, function: str, size: int, mtime: int) -> tuple[str, ast.Module]:
    """``(hash of the entry's source, the entry's tree)``, cached while the file is unchanged."""
    tree = entry_tree(path, function)
    text = _tree_text(copy.deepcopy(tree))  # stripping edits the tree it is given
    return hashlib.sha256(text.encode("utf-8")).hexdigest(), tree


def _strip(node: ast.AST, imports: set[str], registered: frozenset[str] = frozenset()) -> None:
    """Remove docstrings and import statements from every body under ``node`` (the imports' dumps
    go into ``imports``, but for relative imports of ``registered`` packages only); a body left empty
    gets a ``pass``."""
    for name in ("body", "orelse", "finalbody", "handlers"):
        body = getattr(node, name, None)
        if not isinstance(body, list):
            continue
        if name == "body" and isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]
        kept = []
        for child in body:
            if isinstance(child, ast.ImportFrom) and child.level == 1 and child.module is None and registered:
                others = [alias for alias in child.names if alias.name not in registered]
                if others:
                    imports.add(ast.dump(ast.ImportFrom(None, others, 1), annotate_fields=False))
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                imports.add(ast.dump(child, annotate_fields=False))
            else:
                kept.append(child)
        if name == "body" and not kept and not isinstance(node, ast.Module):
            kept = [ast.Pass()]
        setattr(node, name, kept)
    for child in ast.iter_child_nodes(node):
        _strip(child, imports, registered)


def allowed_methods(methods: Iterable[str] | None, all_methods: frozenset[str]) -> set[str]:
    """The method packages ``methods`` names (``None``: all of them), as full module names."""
    return set(all_methods) if methods is None else {method_name(m, all_methods) for m in methods}


def parse_roots(roots: Iterable[str | Path], root: Path = PACKAGE_ROOT) -> list[str | tuple[Path, str | None]]:
    """Each root as a module name, or as ``(script path, function)`` (``None``: the whole script);
    a missing script or module is an error."""
    parsed: list[str | tuple[Path, str | None]] = []
    for item in roots:
        script, function = split_entry(item)
        if isinstance(item, Path) or str(script).endswith(".py"):
            path = script.resolve()
            if not path.is_file():
                raise BackdoorLabError(f"cannot hash the code of {path}: no such file")
            parsed.append((path, function))
        elif module_file(str(item), root) is None:
            raise BackdoorLabError(f"cannot hash the code of {item!r}: no such backdoorlab module")
        else:
            parsed.append(str(item))
    return parsed


def dependency_files(roots: Iterable[str | Path], methods: Iterable[str] | None = (),
                     root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Every source file the ``roots`` and the method packages ``methods`` (names such as ``onion``;
    ``None``: all) depend on, by module name (scripts by their file name).

    A root is a module name (``backdoorlab.defenses.onion``), the path of a script that imports
    the package, or one function of a script (``script.py::name``). See the module docstring for
    how each kind of root and the method packages are counted."""
    all_methods = method_packages(root)
    allowed = allowed_methods(methods, all_methods)
    queue: list[tuple[str | None, Path]] = [(m, module_file(m, root)) for m in sorted(allowed)]  # type: ignore[misc]
    entries: list[tuple[Path, str]] = []
    for root_item in parse_roots(roots, root):
        if isinstance(root_item, str):
            owner = method_of(root_item, all_methods)
            if owner is not None:
                allowed.add(owner)
            queue.append((root_item, module_file(root_item, root)))  # type: ignore[arg-type]
        elif root_item[1] is None:
            queue.append((None, root_item[0]))
        else:
            entries.append(root_item)  # type: ignore[arg-type]
    files: dict[str, Path] = {}
    for path, function in entries:
        files[f"{path.name}{ENTRY_SEPARATOR}{function}"] = path
        stat = path.stat()
        tree = _entry(path, function, stat.st_size, stat.st_mtime_ns)[1]
        queue.extend((name, module_file(name, root)) for name in _modules_in(tree, None, False, root)  # type: ignore[misc]
                     if name not in BOOKKEEPING)
    while queue:
        module, path = queue.pop()
        key = module or path.name
        if key in files:
            continue
        files[key] = path
        for name in imported_modules(path, module, root):
            owner = method_of(name, all_methods)
            if owner is not None and owner not in allowed:
                if module == _REGISTRY:
                    continue  # the registry imports every method to register it: not this result's code
                allowed.add(owner)  # a method builds on another, or other code uses one: that one counts too
            if name not in files and name not in BOOKKEEPING:
                queue.append((name, module_file(name, root)))  # type: ignore[arg-type]
    return files


def method_name(name: str, all_methods: frozenset[str]) -> str:
    full = name if name.startswith(PACKAGE + ".") else f"{PACKAGE}.{_METHODS_PARENT}.{name}"
    if full not in all_methods:
        raise BackdoorLabError(f"{name!r} is not a defense method package; expected one of "
                               f"{', '.join(sorted(m.rsplit('.', 1)[1] for m in all_methods))}")
    return full


@functools.lru_cache(maxsize=4096)
def _file_hash(path: Path, size: int, mtime: int, registered: frozenset[str] = frozenset()) -> str:
    return hashlib.sha256(source_text(path, registered).encode("utf-8")).hexdigest()


def code_digest(roots: Iterable[str | Path], methods: Iterable[str] | None = (),
                root: Path = PACKAGE_ROOT, *, form: str = CURRENT_FORM) -> str:
    """SHA-256 over the source the ``roots`` depend on, in one of :data:`CODE_FORMS`.

    ``reach`` (the current form) hashes only the top-level statements the roots can run
    (:mod:`backdoorlab.codereach`). ``files`` hashes every file they import (see
    :func:`dependency_files`), with the methods' parent package (``defenses/__init__``) hashed
    without its registration imports of method packages; ``files-legacy`` hashes it with them. The
    earlier forms let records written under them be recognised while their code is unchanged."""
    if form not in CODE_FORMS:
        raise BackdoorLabError(f"unknown code digest form {form!r}; expected one of {', '.join(CODE_FORMS)}")
    if form == CURRENT_FORM:
        from .codereach import reach_digest, reach_of

        return reach_digest(reach_of(roots, methods, root))
    legacy = form == "files-legacy"
    files = dependency_files(roots, methods, root)
    registered = frozenset() if legacy else frozenset(m.rsplit(".", 1)[1] for m in method_packages(root))
    sha = hashlib.sha256()
    for key in sorted(files):
        stat = files[key].stat()
        _, function = split_entry(key)
        digest = (_file_hash(files[key], stat.st_size, stat.st_mtime_ns, registered if key == _REGISTRY else frozenset())
                  if function is None else _entry(files[key], function, stat.st_size, stat.st_mtime_ns)[0])
        sha.update(f"{key}:{digest}\n".encode())
    return sha.hexdigest()
