"""The package's layering (README "Architecture"): every import points down, and the
packages of one layer never import each other. A test, so that the picture in the README
and the code cannot drift apart."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rlbias_jax"

# bottom to top; the README's architecture section lists the same layers
LAYERS = [
    {"config", "partitions", "runs"},
    {"distributed", "tasks", "models"},
    {"checkpoints", "rl", "probing", "analysis"},
    {"experiments"},
    {"cli"},
]


def _layer(name: str) -> int:
    return next(index for index, names in enumerate(LAYERS) if name in names)


def _imports(path: Path) -> set[str]:
    """Top-level rlbias_jax modules/packages imported by one file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rlbias_jax":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("rlbias_jax.")}
    return found


def test_every_module_belongs_to_a_layer():
    names = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()
             if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()}
    assert names == set().union(*LAYERS)


def test_imports_point_down_only():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        owner = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for target in _imports(path) - {owner}:
            if _layer(target) >= _layer(owner):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not wrong, wrong
