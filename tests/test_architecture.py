"""The shape of the house (docs/architecture.md): layers that only point down,
every file-system mutation through the fs layer, the layout spelled once,
modules kept small.

These read the source with ``ast``; they fail when a change breaks a rule,
and say where.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import safecache

PACKAGE = pathlib.Path(safecache.__file__).parent

#: Each module's layer.  A module may import modules of its own layer or
#: below, never above, and the graph has no cycle.  A new module must be
#: placed here (the test fails until it is), which is the moment to decide
#: where it belongs.
LAYERS: dict[str, int] = {
    # 0: what everything may use
    "_errors": 0,
    "_errcodes": 0,
    "_version": 0,
    "_units": 0,
    "_policy": 1,
    # 2: the system-call indirection and its Windows backend
    "_win32": 2,
    "_osops": 2,
    # 3: the one file-system layer
    "_fs": 3,
    # 4: formats and names
    "_format": 4,
    "_keys": 4,
    "_layout": 4,
    # 5: services over files
    "_locks": 5,
    "_stats": 5,
    "_location": 5,
    "_link": 5,
    "_compute": 5,
    "_trust": 5,
    "_remote": 5,
    "_remote_open": 5,
    "_remote_http": 5,
    "_remote_redis": 5,
    "_remote_s3": 5,
    # 6: the store
    "_bucket": 6,
    "_write": 6,
    "_read": 6,
    "_listing": 6,
    "_tier": 6,
    "_cache": 6,
    "_memoize": 6,
    "_aio": 6,
    # 7: trees
    "_manifest": 7,
    "_tree": 7,
    "_trees": 7,
    "_tree_remote": 7,
    "_place": 7,
    # 8: maintenance and diagnosis
    "_walk": 8,
    "_examine": 8,
    "_reclaim": 8,
    "_trimmer": 8,
    "_trim": 8,
    "_prune": 8,
    "_clean": 8,
    "_verify": 8,
    "_info": 8,
    "_maintenance": 8,
    "maintenance": 8,
    "_doctor": 8,
    "_doctor_checks": 8,
    "_doctor_contents": 8,
    "_doctor_fs": 8,
    "_doctor_links": 8,
    "_doctor_probes": 8,
    "_doctor_report": 8,
    "_doctor_remote": 8,
    "_doctor_remedies": 8,
    "_probe": 8,
    "_fsinfo": 8,
    "_remedies": 8,
    "_render": 8,
    "doctor": 8,
    # 9: the command line
    "_cli": 9,
    "_cli_format": 9,
    "_cli_commands": 9,
    "_progress": 9,
    "cli": 9,
    "adapters": 9,
    "adapters.cachecontrol": 9,
    "adapters.joblib": 9,
    "adapters.hishel": 9,
    # 10: the front door, which wires the layers together
    "__init__": 10,
    "__main__": 10,
}
#: The testing package sits beside the library: it may import anything, and
#: nothing in the library imports it.
TESTING_LAYER = 9


def _modules() -> dict[str, pathlib.Path]:
    """Module name (dotted below the package, ``testing._windows``) -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
    return name in ("TYPE_CHECKING", "_TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, inside functions too; those under
    ``if TYPE_CHECKING:`` never run and are left out."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package's modules an import statement in ``module`` loads."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "safecache" or alias.name.startswith("safecache."):
                out.add(alias.name.removeprefix("safecache").lstrip(".") or "__init__")
        return {t for t in out if t in known or t == "__init__"}
    if node.level == 0:
        if node.module is None or not (node.module == "safecache" or node.module.startswith("safecache.")):
            return out
        base = node.module.removeprefix("safecache").lstrip(".")
    else:
        package = module.split(".")[:-1] if module != "__init__" and not _is_package(module) else module.split(".")
        if module == "__init__":
            package = []
        if node.level > 1:
            package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        if candidate in known:
            out.add(candidate)
        elif base in known:
            out.add(base)
        elif not base:
            out.add("__init__")
    return out


def _is_package(module: str) -> bool:
    return (PACKAGE / module.replace(".", "/") / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in _runtime_imports(tree):
            edges |= _targets(name, node, known)
        edges.discard(name)
        graph[name] = edges
    return graph


def _layer(module: str) -> int | None:
    if module == "testing" or module.startswith("testing."):
        return TESTING_LAYER
    return LAYERS.get(module)


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in _modules() if _layer(m) is None)
    assert not unplaced, f"place these modules in LAYERS (tests/test_architecture.py): {unplaced}"


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module, targets in _graph().items():
        here = _layer(module)
        if here is None:
            continue
        for target in targets:
            there = _layer(target)
            if there is not None and there > here:
                upward.append(f"{module} (layer {here}) imports {target} (layer {there})")
    assert not upward, "\n".join(sorted(upward))


#: The one place the library may reach the testing package: the front door's
#: SAFECACHE_EMULATE_WINDOWS hook (docs/testing.md), run only when it is set.
TESTING_HOOKS = {("__init__", "testing._environ")}


def test_the_library_never_imports_testing() -> None:
    offenders = [
        f"{m} imports {t}"
        for m, targets in _graph().items()
        if not (m == "testing" or m.startswith("testing."))
        for t in targets
        if (t == "testing" or t.startswith("testing.")) and (m, t) not in TESTING_HOOKS
    ]
    assert not offenders


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target == "__init__":
                continue  # every submodule import runs the package first; __init__ is the top
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_the_graph_checker_sees_imports_inside_functions() -> None:
    # The checker must not be fooled by the usual way of hiding a cycle.
    tree = ast.parse("def f():\n    from ._cli import main\nif TYPE_CHECKING:\n    from ._doctor import Report\n")
    names = [t for node in _runtime_imports(tree) for t in _targets("_bucket", node, {"_cli", "_doctor"})]
    assert names == ["_cli"]


# -- every mutation through the fs layer ----------------------------------------------------
#: Modules allowed to call these: the system-call indirection, the fs layer,
#: the Windows backend, and the emulator (which *is* a system-call layer).
FS_MODULES = {"_osops", "_fs", "_win32"}
MUTATING_OS = {"rename", "replace", "unlink", "remove", "mkdir", "makedirs", "rmdir", "link", "symlink", "chmod"}


def _mutations(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls (and references) of os.<mutation>, shutil.* (but disk_usage) and
    tempfile.*, also through ``from os import ...`` and aliases."""
    aliases: dict[str, str] = {}  # local name -> "os" | "shutil" | "tempfile" | "os.rename" ...
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("os", "shutil", "tempfile"):
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "shutil", "tempfile") and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        qualified = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            qualified = f"{aliases[node.value.id]}.{node.attr}"
        elif isinstance(node, ast.Name) and "." in aliases.get(node.id, ""):
            qualified = aliases[node.id]
        if qualified is None:
            continue
        module, _, attr = qualified.partition(".")
        if (
            (module == "os" and attr in MUTATING_OS)
            or (module == "shutil" and attr != "disk_usage")
            or module == "tempfile"
        ):
            found.append((node.lineno, qualified))
    return found


def test_only_the_fs_layer_mutates_the_file_system() -> None:
    offenders = []
    for module, path in _modules().items():
        if module in FS_MODULES or module == "testing" or module.startswith("testing."):
            continue
        for line, call in _mutations(ast.parse(path.read_text(encoding="utf-8"))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {call}")
    assert not offenders, "route these through _fs/_osops:\n" + "\n".join(sorted(offenders))


@pytest.mark.parametrize(
    "source",
    [
        "import os\nos.rename('a', 'b')",
        "import os as o\no.unlink('a')",
        "from os import replace\nreplace('a', 'b')",
        "import shutil\nshutil.rmtree('a')",
        "import tempfile\ntempfile.mkdtemp()",
        "def f():\n    import os\n    os.chmod('a', 0o600)",
    ],
)
def test_the_fs_checker_catches(source: str) -> None:
    assert _mutations(ast.parse(source))


def test_the_fs_checker_allows_reads_and_disk_usage() -> None:
    assert not _mutations(ast.parse("import os, shutil\nos.stat('a'); os.path.join('a'); shutil.disk_usage('/')"))


# -- the layout spelled once ------------------------------------------------------------------
#: The names only _layout may spell as string literals.
LAYOUT_NAMES = {"buckets", "locks", "stats", "trees", "tree-objects", "CACHEDIR.TAG", "trim.lock", ".trash-", ".del-"}


def _path_literals(tree: ast.AST) -> list[ast.Constant]:
    """String literals used as parts of paths or names on disk: arguments of
    a ``join``, a name test (``startswith``/``endswith``), a comparison, or
    a piece of an f-string.  (JSON keys and report words may say "buckets".)"""
    found: list[ast.Constant] = []
    for node in ast.walk(tree):
        pieces: list[ast.expr] = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("join", "startswith", "endswith", "exists", "lexists"):
                pieces = list(node.args)
        elif isinstance(node, ast.Compare):
            pieces = [node.left, *node.comparators]
        elif isinstance(node, ast.JoinedStr):
            pieces = list(node.values)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            # path + ".del-": a suffix; a prefix + "buckets" is an argparse dest
            pieces = [p for p in (node.left, node.right) if isinstance(p, ast.Constant) and str(p.value).startswith(".")]
        found += [p for p in pieces if isinstance(p, ast.Constant) and isinstance(p.value, str)]
    return found


def test_only_the_layout_module_spells_directory_names() -> None:
    offenders = []
    for module, path in _modules().items():
        if module == "_layout" or module == "testing" or module.startswith("testing."):
            continue
        for node in _path_literals(ast.parse(path.read_text(encoding="utf-8"))):
            text = str(node.value)
            if any(name in text for name in LAYOUT_NAMES if name.startswith(".")) or text.strip("/") in LAYOUT_NAMES:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {text!r}")
    assert not offenders, "ask _layout for these:\n" + "\n".join(sorted(offenders))


def test_the_layout_checker_catches_a_spelled_path() -> None:
    tree = ast.parse("import os\nos.path.join(root, 'locks', name)\nname.endswith('.del-x')\nf'{p}.del-{r}'")
    assert len([n for n in _path_literals(tree) if str(n.value).strip("/") in LAYOUT_NAMES or ".del-" in str(n.value)]) == 3


# -- small modules --------------------------------------------------------------------------------
MAX_LINES = 600


def test_modules_stay_small() -> None:
    big = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in _modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not big, f"split these by concept (limit {MAX_LINES} lines): {big}"
