"""The top-level statements of the ``backdoorlab`` source that a root can run: the finest code digest.

:mod:`backdoorlab.codeversion` hashes the code behind a result. Hashed file by file, an edit to a
module every result imports (the model loader, the training loop) makes every result stale, even
when the edited function is one no result calls. This module narrows the digest to statements:
starting from the roots, it follows names, read statically from the source, to the top-level
statements that bind them, in whichever module they live, and keeps those statements only.

The rules, each chosen to err on the side of counting too much:

- A name a kept statement reads (in its nested functions too) keeps every top-level statement of
  its module that binds it; a name bound by an import keeps what the import names in the other
  module. ``alias.attr.sub`` through a module alias follows submodules, then keeps ``attr`` of the
  last module; a module alias used bare (passed on, ``getattr`` on it) keeps that whole module.
- Importing a module runs it: every module a root reaches, its parent packages and whatever their
  top-level imports pull in contribute their statements that act when imported: those that bind
  no name (``if __name__ == "__main__"`` blocks and docstrings excepted), and those whose
  import-time part (decorators, default values, class bodies, right-hand sides) calls code of the
  package, such as a registration decorator.
- A function that declares a name ``global`` binds it.
- Defense methods are kept apart as in :mod:`backdoorlab.codeversion`: the registry's imports of
  the method packages (``defenses/__init__``) pull in only the methods the root names or that
  other counted code imports.
- :data:`~backdoorlab.codeversion.BOOKKEEPING` modules are left out.

A kept statement's text is its syntax tree without docstrings; the imports inside kept statements
and the top-level imports that kept statements read are listed once each, sorted, after them, so
where an import sits does not count. Editing a
function no root reaches, adding a function, or reordering definitions leaves the digest as it was.
What static reading cannot see (a module imported by a computed name, an attribute looked up by a
string on an object of another module's class that nothing reached names) is not counted; the
package has neither pattern today, and the tests guard the ones it has.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .codeversion import (BOOKKEEPING, PACKAGE, PACKAGE_ROOT, _REGISTRY, _absolute, _bound_names, _is_docstring,
                          _is_main_guard, _strip, allowed_methods, method_of, method_packages, module_file,
                          parse_roots)
from .errors import BackdoorLabError


@dataclass(frozen=True)
class Target:
    """What an import binds: a module (``name`` ``None``) or one name in it; ``module`` may lie outside the package."""
    module: str
    name: str | None = None


@dataclass(frozen=True)
class Statement:
    """One top-level statement, with what reading it needs."""
    node: ast.stmt
    binds: frozenset[str]
    #: every name it reads, with the attribute chain read through it: ``(name, ("attr", ...))``
    refs: tuple[tuple[str, tuple[str, ...]], ...]
    #: the names bound by imports inside it (function-local imports, ``try``/``if`` imports)
    imports: dict[str, tuple[Target, ...]]
    #: the package modules those imports run
    runs: tuple[str, ...]
    #: base names called when the module is imported (decorators, defaults, class bodies, values)
    import_time_calls: frozenset[str]


@dataclass
class ModuleSource:
    """A parsed module or script: its statements and its top-level import bindings."""
    key: str
    module: str | None
    statements: list[Statement]
    binders: dict[str, list[int]] = field(default_factory=dict)
    imports: dict[str, tuple[Target, ...]] = field(default_factory=dict)
    import_texts: dict[str, str] = field(default_factory=dict)
    runs: tuple[str, ...] = ()


def _chains(node: ast.AST) -> list[tuple[str, tuple[str, ...]]]:
    """Every name read under ``node``, with the attribute chain read through it."""
    found: list[tuple[str, tuple[str, ...]]] = []

    def visit(child: ast.AST) -> None:
        if isinstance(child, ast.Attribute):
            attrs: list[str] = []
            base: ast.AST = child
            while isinstance(base, ast.Attribute):
                attrs.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                found.append((base.id, tuple(reversed(attrs))))
                return
            visit(base)
            return
        if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load):
            found.append((child.id, ()))
            return
        for grandchild in ast.iter_child_nodes(child):
            visit(grandchild)

    visit(node)
    return found


def _import_bindings(node: ast.Import | ast.ImportFrom, module: str | None, is_package: bool,
                     root: Path) -> tuple[dict[str, tuple[Target, ...]], list[str]]:
    """``(name -> targets, package modules run)`` of one import statement."""
    bindings: dict[str, tuple[Target, ...]] = {}
    runs: list[str] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            runs.extend(_with_parents(alias.name, root))
            if alias.asname:
                bindings[alias.asname] = (Target(alias.name),)
            else:
                top = alias.name.split(".")[0]
                bindings[top] = (Target(top),)
        return bindings, runs
    base = _absolute(node, module, is_package)
    if base is None:
        return bindings, runs
    runs.extend(_with_parents(base, root))
    for alias in node.names:
        if alias.name == "*":
            bindings.setdefault("*", ())
            bindings["*"] += (Target(base),)
            continue
        submodule = f"{base}.{alias.name}"
        targets = [Target(base, alias.name)]
        if module_file(submodule, root) is not None:
            targets.append(Target(submodule))
            runs.append(submodule)
        bindings[alias.asname or alias.name] = tuple(targets)
    return bindings, runs


def _in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _with_parents(module: str, root: Path) -> list[str]:
    parts = module.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return [name for name in names if module_file(name, root) is not None]


def _import_time_calls(node: ast.AST) -> set[str]:
    """Base names of what ``node`` calls when its module is imported (not inside function bodies)."""
    calls: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        parts: list[ast.AST] = list(node.args.defaults) + [d for d in node.args.kw_defaults if d is not None]
        if not isinstance(node, ast.Lambda):
            parts += node.decorator_list
            calls.update(base for d in node.decorator_list for base, _ in _chains(d)[:1])
        for part in parts:
            calls |= _import_time_calls(part)
        return calls
    if isinstance(node, ast.ClassDef):
        calls.update(base for d in node.decorator_list for base, _ in _chains(d)[:1])
        for part in [*node.decorator_list, *node.bases, *node.keywords, *node.body]:
            calls |= _import_time_calls(part)
        return calls
    if isinstance(node, ast.Call):
        calls.update(base for base, _ in _chains(node.func)[:1])
    for child in ast.iter_child_nodes(node):
        calls |= _import_time_calls(child)
    return calls


def _statement(node: ast.stmt, module: str | None, is_package: bool, root: Path) -> Statement:
    binds = set(_bound_names(node))
    imports: dict[str, tuple[Target, ...]] = {}
    runs: list[str] = []
    for child in ast.walk(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            bindings, ran = _import_bindings(child, module, is_package, root)
            for name, targets in bindings.items():
                imports[name] = imports.get(name, ()) + targets
            runs.extend(ran)
        elif isinstance(child, ast.Global):
            binds.update(child.names)
    return Statement(node, frozenset(binds), tuple(_chains(node)), imports, tuple(dict.fromkeys(runs)),
                     frozenset(_import_time_calls(node)))


@functools.lru_cache(maxsize=4096)
def _parse(path: Path, module: str | None, root: Path, size: int, mtime: int) -> ModuleSource:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    source = ModuleSource(module or path.name, module, [])
    runs: list[str] = []
    for index, node in enumerate(tree.body):
        if _is_main_guard(node) or (index == 0 and _is_docstring(node)):
            node = ast.Pass()  # never run on import, never read: kept as a placeholder so indices hold
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bindings, ran = _import_bindings(node, module, is_package, root)
            for name, targets in bindings.items():
                source.imports[name] = source.imports.get(name, ()) + targets
            for alias in node.names:
                one = ast.Import([alias]) if isinstance(node, ast.Import) else ast.ImportFrom(node.module, [alias], node.level)
                bound = alias.asname or (alias.name if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0])
                source.import_texts[bound] = ast.dump(one, annotate_fields=False)
            runs.extend(ran)
            source.statements.append(Statement(ast.Pass(), frozenset(), (), {}, (), frozenset()))
            continue
        statement = _statement(node, module, is_package, root)
        source.statements.append(statement)
        for name in statement.binds:
            source.binders.setdefault(name, []).append(index)
    source.runs = tuple(dict.fromkeys(runs))
    return source


def parse_source(path: Path, module: str | None, root: Path = PACKAGE_ROOT) -> ModuleSource:
    """The parsed source at ``path`` (cached while the file is unchanged)."""
    stat = path.stat()
    return _parse(path, module, root, stat.st_size, stat.st_mtime_ns)


class Reach:
    """The statements that a set of roots can run, module by module (see the module docstring)."""

    def __init__(self, allowed_methods: set[str], all_methods: frozenset[str], root: Path = PACKAGE_ROOT) -> None:
        self.allowed, self.all_methods, self.root = allowed_methods, all_methods, root
        self.sources: dict[str, ModuleSource] = {}
        self.kept: dict[str, set[int]] = {}
        self.import_names: dict[str, set[str]] = {}
        self._touched: set[str] = set()
        self._needed: set[tuple[str, str | None, tuple[str, ...]]] = set()

    # -- entry points ------------------------------------------------------------------------
    def add_script(self, path: Path, function: str | None) -> None:
        """Count ``function`` of the script at ``path`` (or all of it)."""
        source = parse_source(path, None, self.root)
        key = source.key if function is None else f"{source.key}::{function}"
        self.sources[key] = source
        self._touch_source(key, source)
        if function is None:
            self._keep_all(key, source)
        elif function not in source.binders:
            raise BackdoorLabError(f"cannot hash the code of {path}::{function}: the script defines no top-level "
                                   f"{function!r}")
        else:
            self._need_in(key, source, function, ())

    # -- the walk ----------------------------------------------------------------------------
    def _load(self, module: str) -> ModuleSource | None:
        if module in BOOKKEEPING or not _in_package(module):
            return None
        if module not in self.sources:
            path = module_file(module, self.root)
            if path is None:
                return None
            self.sources[module] = parse_source(path, module, self.root)
        return self.sources[module]

    def touch(self, module: str) -> None:
        """``module`` is imported: its parents run, then whatever acts on import in it."""
        if module in self._touched:
            return
        self._touched.add(module)
        for parent in _with_parents(module, self.root)[:-1]:
            self.touch(parent)
        source = self._load(module)
        if source is not None:
            self._touch_source(module, source)

    def _touch_source(self, key: str, source: ModuleSource) -> None:
        for ran in source.runs:
            if self._may_run(key, ran):
                self.touch(ran)
        for index, statement in enumerate(source.statements):
            if self._acts_on_import(source, statement):
                self._keep(key, source, index)

    def _registered_only(self, importer: str, target: Target) -> bool:
        """Whether ``target`` is a method that ``importer`` (the registry) imports only to register it."""
        module = target.module if target.name is None else f"{target.module}.{target.name}"
        owner = method_of(module, self.all_methods)
        return importer == _REGISTRY and owner is not None and owner not in self.allowed

    def _may_run(self, importer: str, module: str) -> bool:
        owner = method_of(module, self.all_methods)
        if owner is None or owner in self.allowed:
            return True
        if importer == _REGISTRY:
            return False  # the registry imports every method to register it: not this root's code
        self.allowed.add(owner)  # a method builds on another, or other code uses one: that one counts too
        return True

    def _acts_on_import(self, source: ModuleSource, statement: Statement) -> bool:
        if isinstance(statement.node, ast.Pass) and not statement.binds:
            return False
        if not statement.binds:
            return True
        return any(self._is_package_name(source, statement, name) for name in statement.import_time_calls)

    def _is_package_name(self, source: ModuleSource, statement: Statement, name: str) -> bool:
        if name in source.binders:
            return True
        targets = statement.imports.get(name, ()) + source.imports.get(name, ())
        return any(_in_package(t.module) for t in targets)

    def need(self, module: str, name: str | None = None, chain: tuple[str, ...] = ()) -> None:
        """Count ``name`` of ``module`` read through ``chain`` (``name`` ``None``: all of the module)."""
        key = (module, name, chain)
        if key in self._needed:
            return
        self._needed.add(key)
        self.touch(module)
        source = self._load(module)
        if source is None:
            return
        if name is None:
            self._keep_all(module, source)
        else:
            self._need_in(module, source, name, chain)

    def _keep_all(self, key: str, source: ModuleSource) -> None:
        for index in range(len(source.statements)):
            self._keep(key, source, index)
        for name, targets in source.imports.items():
            runnable = [t for t in targets if not self._registered_only(key, t)]
            if runnable:
                self.import_names.setdefault(key, set()).add(name)
            for target in runnable:
                if name == "*" or target.name is not None:
                    self._resolve(key, target, ())

    def _need_in(self, key: str, source: ModuleSource, name: str, chain: tuple[str, ...]) -> None:
        targets = [t for t in source.imports.get(name, ()) if not self._registered_only(key, t)]
        if targets:
            self.import_names.setdefault(key, set()).add(name)
            for target in targets:
                self._resolve(key, target, chain)
        if "*" in source.imports and name not in source.binders:
            for target in source.imports["*"]:
                self._resolve(key, Target(target.module, name), chain)
        for index in source.binders.get(name, []):
            self._keep(key, source, index)
            for target in source.statements[index].imports.get(name, ()):
                self._resolve(key, target, chain)

    def _resolve(self, importer: str, target: Target, chain: tuple[str, ...]) -> None:
        if not _in_package(target.module) or target.module in BOOKKEEPING or not self._may_run(importer, target.module):
            return  # another package's code, or bookkeeping
        if target.name is not None:
            self.need(target.module, target.name, chain)
            return
        module = target.module
        self.touch(module)
        while chain:
            submodule = f"{module}.{chain[0]}"
            if module_file(submodule, self.root) is None:
                self.need(module, chain[0], chain[1:])
                return
            self.need(module, chain[0], ())  # the package may bind the name too
            module, chain = submodule, chain[1:]
            self.touch(module)
        self.need(module)

    def _keep(self, key: str, source: ModuleSource, index: int) -> None:
        kept = self.kept.setdefault(key, set())
        if index in kept:
            return
        kept.add(index)
        statement = source.statements[index]
        for ran in statement.runs:
            if self._may_run(key, ran):
                self.touch(ran)
        for name, chain in statement.refs:
            for target in statement.imports.get(name, ()):
                self._resolve(key, target, chain)
            self._need_in(key, source, name, chain)

    # -- the digest --------------------------------------------------------------------------
    def texts(self) -> dict[str, str]:
        """What each module contributes to the digest, by module name (scripts by file name)."""
        out: dict[str, str] = {}
        for key in sorted(set(self.kept) | set(self.import_names)):
            source = self.sources[key]
            body = [copy.deepcopy(source.statements[i].node) for i in sorted(self.kept.get(key, ()))]
            imports: set[str] = set()
            module = ast.Module(body=body, type_ignores=[])
            _strip(module, imports)
            imports.update(source.import_texts[name] for name in self.import_names.get(key, ())
                           if name in source.import_texts)
            out[key] = ast.dump(module, annotate_fields=False) + "\n" + "\n".join(sorted(imports))
        return out


def reach_of(roots: Iterable[str | Path], methods: Iterable[str] | None = (), root: Path = PACKAGE_ROOT) -> Reach:
    """The statements the ``roots`` and the method packages ``methods`` reach (roots as in
    :func:`~backdoorlab.codeversion.dependency_files`: module names, script paths, ``script.py::function``)."""
    all_methods = method_packages(root)
    reach = Reach(allowed_methods(methods, all_methods), all_methods, root)
    for method in sorted(reach.allowed):
        reach.need(method)
    for item in parse_roots(roots, root):
        if not isinstance(item, str):
            reach.add_script(*item)
            continue
        owner = method_of(item, all_methods)
        if owner is not None and owner not in reach.allowed:
            reach.allowed.add(owner)
            reach.need(owner)
        reach.need(item)
    return reach


def reach_digest(reach: Reach) -> str:
    """SHA-256 over what :meth:`Reach.texts` keeps."""
    sha = hashlib.sha256()
    for key, text in sorted(reach.texts().items()):
        sha.update(f"{key}:{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n".encode())
    return sha.hexdigest()


def reached_modules(reach: Reach) -> Iterable[str]:
    """The modules (and scripts) that contribute code."""
    return sorted(set(reach.kept) | set(reach.import_names))
