"""The package reads in the order data flows: no module imports one that comes after it, and no cycle."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "fer_bench"
# Top to bottom in the order data flows; a module may import its own floor and the floors above it.
FLOORS = [
    ("fer_bench", "fer_bench.errors", "fer_bench.registry", "fer_bench.console", "fer_bench.files"),
    ("fer_bench.config",),
    ("fer_bench.backends",),
    ("fer_bench.data",),
    ("fer_bench.models",),
    ("fer_bench.experiment",),
    ("fer_bench.training",),
    ("fer_bench.evaluation",),
    ("fer_bench.runs",),
    ("fer_bench.sweeps",),
    ("fer_bench.photos",),
    ("fer_bench.reporting",),
    ("fer_bench.tracking",),
    ("fer_bench.cli",),
]


def module_name(path: Path) -> str:
    return ".".join(("fer_bench", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def floor(module: str) -> int:
    for index, names in enumerate(FLOORS):
        if any(module == name or (name != "fer_bench" and module.startswith(name + ".")) for name in names):
            return index
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def imports(path: Path) -> set[str]:
    """Every fer_bench module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fer_bench"):
            for alias in node.names:  # `from fer_bench.models import cnn` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE / Path(*sub.split(".")[1:])).with_suffix(".py").exists() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fer_bench"))
    return found


GRAPH = {module_name(path): imports(path) - {module_name(path)} for path in PACKAGE.rglob("*.py")}


def test_no_module_imports_one_that_comes_after_it():
    upward = [(module, target) for module, targets in GRAPH.items() for target in targets if floor(target) > floor(module)]
    assert upward == []


def test_no_import_cycle():
    def visit(module, path):
        if module in path:
            raise AssertionError(" -> ".join([*path[path.index(module):], module]))
        for target in GRAPH.get(module, ()):
            if not target.startswith(module + "."):  # a package importing its own modules to register them
                visit(target, [*path, module])

    for module in GRAPH:
        visit(module, [])


def test_every_module_has_a_floor_and_a_docstring():
    for path in PACKAGE.rglob("*.py"):
        floor(module_name(path))
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} says nothing of what it holds"


def test_readme_map_of_the_code_names_every_module_and_subpackage():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| floor | what lives there |"):]
    table = table[:table.index("\n\n")]
    for path in sorted(PACKAGE.iterdir()):
        if path.name.startswith("_") or path.name in ("shipped",) or path.suffix not in (".py", ""):
            continue
        name = f"`{path.name}/`" if path.is_dir() else f"`{path.name}`"
        assert name in table, f"README's map of the code does not name {name}"
        if path.is_dir():
            row = next(line for line in table.splitlines() if line.startswith(f"| {name}"))
            for module in sorted(path.glob("[!_]*.py")):
                assert f"`{module.stem}`" in row, f"README's {name} row does not name {module.stem}"
