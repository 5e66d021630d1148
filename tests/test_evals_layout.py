"""The shape of the code, read with `ast`: evals/ scripts use finprog's public names only and never each other, and
finprog's modules import each other without a cycle, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared_data import REPO

EVALS = sorted((REPO / "evals").rglob("*.py"))
SCRIPT_NAMES = {path.stem for path in EVALS} | {path.name for path in (REPO / "evals").rglob("*") if path.is_dir()}
PATCHING_FUNCTIONS = {"setattr", "delattr"}
PATCHING_METHODS = {"setattr", "delattr", "setitem", "patch", "object", "dict"}  # monkeypatch.*, mock.patch(.object)


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def root_name(node: ast.AST) -> str | None:
    """The name an attribute chain (`a.b.c`) starts from."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def problems(path: Path, scripts: set[str] = SCRIPT_NAMES) -> list[str]:
    """What in one evals script imports another evals script (one of `scripts`, by module or folder name), names
    finprog's private names or patches finprog."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found, from_finprog = [], set()  # from_finprog: the names this script binds to finprog's modules and objects
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in scripts:
                    found.append(f"line {node.lineno}: imports the evals script {alias.name}")
                if parts[0] == "finprog":
                    if any(private(part) for part in parts):
                        found.append(f"line {node.lineno}: imports finprog's private {alias.name}")
                    from_finprog.add(alias.asname or "finprog")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or module.split(".")[0] in scripts:
                found.append(f"line {node.lineno}: imports the evals script {'.' * node.level}{module}")
            if module.split(".")[0] == "finprog":
                for alias in node.names:
                    if private(alias.name) or any(private(part) for part in module.split(".")):
                        found.append(f"line {node.lineno}: imports finprog's private {module}.{alias.name}")
                    from_finprog.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and root_name(node.value) in from_finprog:
            found.append(f"line {node.lineno}: uses finprog's private {ast.unparse(node)}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and root_name(target) in from_finprog:
                    found.append(f"line {node.lineno}: replaces finprog's {ast.unparse(target)}")
        elif isinstance(node, ast.Call) and node.args:
            patching = (isinstance(node.func, ast.Name) and node.func.id in PATCHING_FUNCTIONS
                        or isinstance(node.func, ast.Attribute) and node.func.attr in PATCHING_METHODS)
            first = node.args[0]
            if patching and (root_name(first) in from_finprog
                             or isinstance(first, ast.Constant) and str(first.value).startswith("finprog")):
                found.append(f"line {node.lineno}: patches finprog with {ast.unparse(node.func)}")
    return sorted(found, key=lambda problem: int(problem.split(":")[0].removeprefix("line ")))


@pytest.mark.parametrize("path", EVALS, ids=[str(path.relative_to(REPO)) for path in EVALS])
def test_an_evals_script_uses_only_finprogs_public_names_and_no_other_script(path):
    assert problems(path) == []


def test_the_check_sees_what_it_forbids(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(
        "import ranker_probe\nfrom grid import TRAINING\nfrom . import sibling\n"
        "from finprog import dsl, retrieval\nfrom finprog.training import _training_step\n"
        "from unittest import mock\nimport finprog.models as models\n"
        "dsl._parser.cache_clear()\nmodels._cache = None\nretrieval.tokens = str.split\n"
        "with mock.patch.object(retrieval, '_YEAR', None): pass\nmock.patch('finprog.retrieval.tokens')\n"
        "retrieval.RANKERS['mine'] = object\nretrieval.__doc__\n")
    lines = {int(problem.split(":")[0].removeprefix("line ")) for problem in problems(script, {"ranker_probe", "grid"})}
    assert lines == {1, 2, 3, 5, 8, 9, 10, 11, 12}  # not the registry (13), not a dunder (14)


def run_time_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:`, which never runs."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (child for branch in node.orelse for child in [branch, *run_time_nodes(branch)])
            continue
        yield node
        yield from run_time_nodes(node)


def finprog_imports() -> dict[str, set[str]]:
    """Each finprog module and the finprog modules it imports when it runs, at module level or inside a function."""
    modules = {path.stem: path for path in (REPO / "finprog").glob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in run_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[1] if "." in alias.name else "__init__"
                             for alias in node.names if alias.name.split(".")[0] == "finprog"}
            elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "finprog"):
                parts = (["finprog"] if node.level else []) + [part for part in (node.module or "").split(".") if part]
                if len(parts) > 1:
                    imported.add(parts[1])
                else:  # from finprog import NAME: a module, or a name of the package
                    imported |= {alias.name if alias.name in modules else "__init__" for alias in node.names}
        graph[name] = imported - {name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (its modules in order, the first again at the end), or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state and (found := visit(imported, path + [imported])):
                return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def test_finprog_has_no_import_cycle():
    graph = finprog_imports()
    assert graph["report"] >= {"runs", "stats"} and "report" in graph["sweep"]  # the graph is read
    assert cycle(graph) is None


def test_the_cycle_check_finds_one_and_skips_what_only_type_checkers_read():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("if TYPE_CHECKING:\n    import a\nelse:\n    import b\ndef f():\n    import c\n")
    assert [alias.name for node in run_time_nodes(tree) if isinstance(node, ast.Import) for alias in node.names] == [
        "b", "c"]
