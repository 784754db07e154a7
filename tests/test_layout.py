"""The house rules, read from the code's AST (nothing is imported or run): files stay small,
project modules import each other at the top and without cycles, and the layers point one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
# demo/ and scripts/ are run as scripts: their siblings import each other by bare name.
SCRIPT_DIRS = ("demo", "scripts")


def _files() -> dict[str, Path]:
    """Module name -> file, for the package and the script folders."""
    out = {}
    for f in sorted((ROOT / "autogpt_jax").rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    for d in SCRIPT_DIRS:
        for f in sorted((ROOT / d).glob("*.py")):
            out[f"{d}/{f.stem}"] = f
    return out


FILES = _files()


def _target(name: str, where: str) -> str | None:
    """The project module an import of ``name`` (from module ``where``) loads, if any."""
    if name == "autogpt_jax" or name.startswith("autogpt_jax."):
        while name not in FILES and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in FILES else None
    if "/" in where:  # a script importing a sibling script
        sibling = f"{where.split('/')[0]}/{name.split('.')[0]}"
        return sibling if sibling in FILES else None
    return None


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported project module, inside a function?, line) for every import in ``module``."""
    tree = ast.parse(FILES[module].read_text())
    out = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # "from pkg import sub" loads pkg.sub when sub is a module, else pkg
                names = [f"{child.module}.{a.name}" for a in child.names]
            else:
                visit(child, local)
                continue
            for n in names:
                t = _target(n, module)
                if t is not None and t != module:
                    out.append((t, in_function, child.lineno))
    visit(tree, False)
    return out


IMPORTS = {m: _imports(m) for m in FILES}


def test_no_file_over_400_lines():
    long = {str(f.relative_to(ROOT)): n for f in FILES.values() if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by concern): {long}"


def test_no_function_local_import_of_a_project_module():
    local = [f"{FILES[m].relative_to(ROOT)}:{line} imports {t}" for m, imps in IMPORTS.items()
             for t, in_function, line in imps if in_function]
    assert not local, "function-local imports of project modules (move them to the top):\n" + "\n".join(local)


def test_no_import_cycle():
    graph = {m: sorted({t for t, _, _ in imps}) for m, imps in IMPORTS.items()}
    cycles, state = [], {}

    def dfs(m, path):
        state[m] = "open"
        for t in graph[m]:
            if state.get(t) == "open":
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                dfs(t, path + [t])
        state[m] = "done"

    for m in graph:
        if m not in state:
            dfs(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _layer(prefix: str) -> dict[str, list[str]]:
    return {m: sorted({t for t, _, _ in IMPORTS[m]}) for m in FILES if m == prefix or m.startswith(prefix + ".")}


def _under(t: str, *prefixes: str) -> bool:
    return any(t == p or t.startswith(p + ".") for p in prefixes)


def test_layers_point_one_way():
    above_stages = ("autogpt_jax.stages", "autogpt_jax.pipeline", "autogpt_jax.selection", "autogpt_jax.train")
    rules = [
        # config/ is the bottom: it may import only errors (and itself)
        ("autogpt_jax.config", lambda t: _under(t, "autogpt_jax.errors", "autogpt_jax.config")),
        # models/ knows neither the data nor the training layer
        ("autogpt_jax.models", lambda t: not _under(t, "autogpt_jax.data", "autogpt_jax.training")),
        # training/ knows no stage, and nothing that runs stages
        ("autogpt_jax.training", lambda t: not _under(t, *above_stages)),
        ("autogpt_jax.data", lambda t: not _under(t, *above_stages, "autogpt_jax.training")),
        ("autogpt_jax.prompts", lambda t: not _under(t, *above_stages)),
    ]
    broken = [f"{m} imports {t}" for prefix, ok in rules for m, targets in _layer(prefix).items()
              for t in targets if not ok(t)]
    assert not broken, "layer breaks:\n" + "\n".join(broken)


def test_the_rules_see_imports():
    """The checks above would pass on a reader that sees nothing: make sure it sees what is there."""
    assert ("autogpt_jax.training.fit", False) in {(t, f) for t, f, _ in IMPORTS["autogpt_jax.stages.finetune"]}
    assert "autogpt_jax.stages" in {t for t, _, _ in IMPORTS["autogpt_jax.pipeline"]}
    assert "autogpt_jax.errors" in {t for t, _, _ in IMPORTS["autogpt_jax.config.sections"]}
    assert _target("autogpt_jax.config.load_config", "x") == "autogpt_jax.config"
    sample = ast.parse("def f():\n    from autogpt_jax.models import hf\n")
    assert isinstance(sample.body[0].body[0], ast.ImportFrom)
    assert any(m.startswith("scripts/") for m in FILES) and any(m.startswith("demo/") for m in FILES)
