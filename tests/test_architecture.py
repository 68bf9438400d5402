"""The package's architecture, read from the source (ast), checked as concerns, not as sizes:

  - no import cycle inside rho_jax (every import statement, module-level or in a function);
  - no upward import: each module sits on a floor of FLOORS and imports only modules on its floor or below;
    a module on no floor fails, naming itself;
  - no private attribute of another module's or package's object: `x._name` (or getattr(x, "_name")) only
    where this module defines `_name`, and no import of a private name or module (`from jax._src import`);
  - no function over MAX_FUNCTION_LINES lines (the def line to the last line);
  - no test module imports another (shared test code: tests/helpers.py, tests/processes.py, conftest.py).
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rho_jax"
MAX_FUNCTION_LINES = 80

# The floors, lowest first (the order of docs/architecture.md's layers). A module may import modules on its
# own floor or a lower one, never a higher one. Names are relative to rho_jax: a module, or a package (its
# __init__ and every module under it; the longest listed name decides); "__init__" is rho_jax's own.
# To add a module, add its name to the floor of its layer.
FLOORS = (
    ("base", ("__init__", "batch", "paths", "quiet", "assets")),
    # the definitions the config names (ModelConfig, mesh axes) and the model's file formats
    ("model", ("model", "projection", "sharding", "interop", "checkpoint")),
    # pure functions over per-token arrays: CE, scores, top-k, weights (the config names their tables)
    ("objective", ("objective", "ce", "goldfish", "microbatch")),
    ("config", ("config", "storage", "run_spec", "reference")),
    ("data", ("data",)),
    ("reference forward", ("score",)),
    ("train", ("train", "gradients", "losses", "flops", "metrics", "distributed", "loop",
               "step_loop")),
    ("score job", ("score_job",)),
    ("eval / analysis", ("evaluate", "answers", "generate", "analysis", "estimate")),
    ("compile", ("aot", "hlo")),
    ("demo", ("demo",)),
    ("entry points", ("cli", "convert", "bench", "sidebyside", "peer", "accelerator_bench", "smoke")),
)
FLOOR_NAMES = [name for name, _ in FLOORS]

# namedtuple's public API carries an underscore (so that it never clashes with a field name)
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make"}


def _module_name(path: Path, root: Path = PKG) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str, modules) -> str | None:
    """The rho_jax module `name` refers to: itself, or its longest known prefix (an attribute import)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for mod, path in modules.items():
        edges = set()
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from mod import name` depends on mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t.startswith("rho_jax"):
                    r = _resolve(t, modules)
                    # a package's __init__ re-exporting its own submodules is not a dependency of the package
                    if r and r != mod and not (path.name == "__init__.py" and r.startswith(mod + ".")):
                        edges.add(r)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS with colours)."""
    state = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        stack, path = [(root, iter(sorted(graph[root])))], [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph.get(nxt, ())))))
                path.append(nxt)
    return None


def floor_of(mod: str, floors=FLOORS) -> int | None:
    """The index in `floors` of rho_jax module `mod` (its own name or the longest listed package above it)."""
    short = "__init__" if mod == "rho_jax" else mod.removeprefix("rho_jax.")
    index = {name: i for i, (_, names) in enumerate(floors) for name in names}
    while short:
        if short in index:
            return index[short]
        short = short.rpartition(".")[0]
    return None


def upward_imports(graph: dict[str, set[str]], floors=FLOORS) -> list[str]:
    """Every import of a module on a higher floor than the importer's, as readable lines."""
    names = [name for name, _ in floors]
    out = []
    for mod in sorted(graph):
        f = floor_of(mod, floors)
        for dep in sorted(graph[mod]):
            g = floor_of(dep, floors)
            if f is not None and g is not None and g > f:
                out.append(f"{mod} (floor {names[f]!r}) imports {dep} (floor {names[g]!r})")
    return out


def _defined_names(tree: ast.AST) -> set[str]:
    """Every name this module binds: defs, classes, assignments (also `self._x = ...`), arguments, imports."""
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.Name, ast.Attribute)) and isinstance(n.ctx, ast.Store):
            names.add(n.id if isinstance(n, ast.Name) else n.attr)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in n.names)
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def private_accesses(path: Path) -> list[str]:
    """`x._name` and getattr(x, "_name") where this module defines no `_name` (another module's or package's
    private), and imports of a private name or from a private module, as 'line: code'."""
    tree = ast.parse(path.read_text(), str(path))
    own, out = _defined_names(tree), []
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and _private(n.attr) and n.attr not in own:
            out.append(f"{n.lineno}: {ast.unparse(n)}")
        elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr")
              and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str)
              and _private(n.args[1].value) and n.args[1].value not in own):
            out.append(f"{n.lineno}: {ast.unparse(n)}")
        elif isinstance(n, ast.ImportFrom) and n.module != "__future__":
            parts = (n.module or "").split(".") + [a.name for a in n.names]
            if any(_private(p) for p in parts):
                out.append(f"{n.lineno}: {ast.unparse(n)}")
        elif isinstance(n, ast.Import) and any(_private(p) for a in n.names for p in a.name.split(".")):
            out.append(f"{n.lineno}: {ast.unparse(n)}")
    return out


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'name (N lines)' for every function or method (nested ones too) longer than `limit` lines."""
    out = []
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit:
            out.append(f"{n.name} ({n.end_lineno - n.lineno + 1} lines, line {n.lineno})")
    return out


# --- the checkers find planted violations ---


def _package(tmp_path, files: dict[str, str]) -> dict[str, Path]:
    """A throwaway rho_jax package under tmp_path: {relative path: source} -> {module name: path}."""
    for rel, text in {"rho_jax/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return {_module_name(p, tmp_path / "rho_jax"): p for p in sorted((tmp_path / "rho_jax").rglob("*.py"))}


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(g) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_sees_function_level_imports(tmp_path):
    mods = _package(tmp_path, {"rho_jax/x.py": "def f():\n    from rho_jax import y\n",
                               "rho_jax/y.py": "import rho_jax.x\n"})
    g = import_graph(mods)
    assert g["rho_jax.x"] == {"rho_jax.y"} and g["rho_jax.y"] == {"rho_jax.x"}
    assert find_cycle(g) is not None


def test_floor_check_finds_a_planted_upward_import_and_an_unknown_module(tmp_path):
    floors = (("low", ("__init__", "data")), ("high", ("train",)))
    mods = _package(tmp_path, {"rho_jax/data/__init__.py": "", "rho_jax/data/rows.py": "from rho_jax import train\n",
                               "rho_jax/train.py": "from rho_jax.data import rows\n", "rho_jax/extra.py": ""})
    assert upward_imports(import_graph(mods), floors) == [
        "rho_jax.data.rows (floor 'low') imports rho_jax.train (floor 'high')"]
    assert floor_of("rho_jax.data.rows", floors) == 0 and floor_of("rho_jax", floors) == 0
    assert floor_of("rho_jax.extra", floors) is None  # "__init__" is rho_jax's own, not every module's


def test_private_check_finds_planted_accesses_and_allows_a_modules_own(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import seqio\nfrom jax._src import distributed\nfrom rho_jax.plots import _figure\n"
                    "class A:\n    def __init__(self):\n        self._own = 1\n    def _helper(self):\n"
                    "        return self._own, A()._helper, (1, 2)._replace\n"
                    "def f(task):\n    return task.source._dataset_fn, getattr(task, '_fn', None), seqio._x\n")
    found = private_accesses(path)
    assert [line.split(":")[0] for line in found] == ["2", "3", "10", "10", "10"], found
    assert any("_dataset_fn" in x for x in found) and any("'_fn'" in x for x in found)


def test_function_length_check_finds_a_planted_long_function(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def short():\n    pass\n\n\nclass A:\n    def long(self):\n" + "        x = 1\n" * 80)
    assert long_functions(path) == ["long (81 lines, line 6)"]


# --- the package ---


def test_no_import_cycles():
    graph = import_graph(_modules())
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_every_module_has_a_floor():
    unknown = sorted(m for m in _modules() if floor_of(m) is None)
    assert not unknown, (f"{unknown} on no floor: add each to the floor of its layer in FLOORS "
                         f"(tests/test_architecture.py; lowest first: {', '.join(FLOOR_NAMES)})")


def test_no_upward_imports():
    bad = upward_imports(import_graph(_modules()))
    assert not bad, ("imports up the floors (FLOORS in tests/test_architecture.py, lowest first: "
                     f"{', '.join(FLOOR_NAMES)}):\n  " + "\n  ".join(bad))


@pytest.mark.parametrize("mod", sorted(_modules()))
def test_no_private_attribute_of_another_module(mod):
    found = private_accesses(_modules()[mod])
    assert not found, f"{mod} uses private names it does not define (use a public API):\n  " + "\n  ".join(found)


def test_no_function_over_80_lines():
    long = {m: f for m, p in _modules().items() if (f := long_functions(p))}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them by concern): {long}"


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers.py, tests/processes.py or conftest.py fixtures."""
    bad = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import)
                     else [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
            bad += [f"{path.name} imports {m}" for m in names if m.split(".")[0].startswith("test_")]
    assert not bad, bad
