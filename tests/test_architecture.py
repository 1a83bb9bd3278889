"""The package's shape: no import cycles inside ``textclf/``, counting imports inside functions too (a function-level
import must not be a way to hide a cycle). Imports under ``if TYPE_CHECKING:`` never run and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "textclf"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Modules of the package that ``module`` imports when it runs (any depth, TYPE_CHECKING blocks skipped)."""
    found: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
                # "from . import outputs" names a module; "from .x import name" names something in x
                found.update(f"{target}.{a.name}" for a in node.names) if not node.module else found.add(target)
            elif node.module and node.module.split(".")[0] == "textclf":
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "textclf")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = _runtime_imports(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py")
        # "from . import __version__" reads the package itself: the package's __init__ is not a module cycle
        graph[name] = {t for t in targets if t in files and t != name and t != "textclf"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def walk(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return cycles


def test_no_import_cycles_inside_the_package():
    assert _cycles(_graph()) == [], "import cycles (each a function in the wrong module)"


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    tree = ast.parse("def f():\n    from .b import x\n")
    assert _runtime_imports(tree, "textclf.a", False) == {"textclf.b"}
    guarded = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n")
    assert _runtime_imports(guarded, "textclf.a", False) == set()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


# Lower layers never import higher ones: the package map reads as the data flow (docs/architecture.md).
LAYERS = ["base", "data", "model", "eval", "deploy", "train", "tools", "entry"]
BASE = {"textclf.config", "textclf.errors", "textclf.outputs", "textclf.runtime"}
ENTRY = {"textclf", "textclf.cli", "textclf.__main__"}


def _layer(module: str) -> int:
    if module in BASE:
        return 0
    if module in ENTRY:
        return len(LAYERS) - 1
    return LAYERS.index(module.split(".")[1])


def test_lower_layers_never_import_higher_ones():
    upward = sorted(f"{a} -> {b}" for a, targets in _graph().items() for b in targets if _layer(b) > _layer(a))
    assert upward == [], "imports against the layer order " + " < ".join(LAYERS)


def test_every_module_belongs_to_a_layer():
    assert all(0 <= _layer(name) < len(LAYERS) for name in _graph())


# What differs between tasks (single-/multi-label) or input strategies (truncation/windows) lives in their objects
# (textclf.eval.tasks, textclf.data.inputs); the loop, the trainer, the predictor, the run's analysis, ensembles and
# export's parity check ask them and never branch.
NO_TASK_BRANCHES = ("train/loop.py", "train/trainer.py", "train/report.py", "deploy/predict.py", "deploy/export.py",
                    "eval/analysis.py", "model/ensemble.py", "tools/seed_ensemble.py")


def _branch_conditions(tree: ast.AST) -> list[str]:
    conditions = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp, ast.While)):
            conditions.append(ast.unparse(node.test))
        elif isinstance(node, ast.comprehension):
            conditions.extend(ast.unparse(c) for c in node.ifs)
    return conditions


def test_the_loop_trainer_predictor_analysis_ensembles_and_export_do_not_branch_on_task_or_input_strategy():
    for name in NO_TASK_BRANCHES:
        conditions = _branch_conditions(ast.parse((PACKAGE / name).read_text(encoding="utf-8")))
        found = [c for c in conditions if "multi_label" in c or "window" in c]
        assert found == [], f"{name} branches on the task or the input strategy: {found}"


def test_the_branch_finder_sees_conditions():
    tree = ast.parse("x = a if self.label_map.multi_label else b\nif spec.windows:\n    pass\n")
    assert sorted(_branch_conditions(tree)) == ["self.label_map.multi_label", "spec.windows"]


def test_the_trainer_assembles_parts_rather_than_implementing_them():
    """Trainer stays a readable assembly of parts: under 400 lines, an __init__ under 40 (the core redesign's bar).
    A new feature belongs in its own object (a task, an input strategy, a callback, a loop hook)."""
    tree = ast.parse((PACKAGE / "train" / "trainer.py").read_text(encoding="utf-8"))
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    init = next(n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert trainer.end_lineno - trainer.lineno + 1 < 400
    assert init.end_lineno - init.lineno + 1 < 40


# An objective declares its recipe name, who may use it, its automatic settings and its search space
# (textclf.train.objectives); the loop, the trainer, the automatic recipe and tune ask it and never name a recipe.
NO_RECIPE_BRANCHES = ("train/loop.py", "train/trainer.py", "train/recipes.py", "tools/tune.py")


def test_the_loop_trainer_recipes_and_tune_do_not_branch_on_a_recipe_name():
    from textclf.train.objectives import OBJECTIVES

    names = [repr(name) for name in OBJECTIVES] + [f'"{name}"' for name in OBJECTIVES]
    for name in NO_RECIPE_BRANCHES:
        conditions = _branch_conditions(ast.parse((PACKAGE / name).read_text(encoding="utf-8")))
        found = [c for c in conditions if any(recipe in c for recipe in names)]
        assert found == [], f"{name} branches on a recipe's name: {found}"


def test_help_and_version_start_without_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom textclf.cli import main\nfor argv in (['--help'], ['--version']):\n    try:\n"
            "        main(argv)\n    except SystemExit:\n        pass\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
