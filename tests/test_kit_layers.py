"""The kit's rooms stand in layers, and imports go one way: down (docs/layout.md, "The kit's layers").

Read from the template's own source, every import in every kit module, at module level or inside
a function: a lazy import is still a dependency, and a circle of lazy imports is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

from template_dev import TOP

KIT = TOP / "template" / "src" / "{{ package_name }}" / "kit"
# Bottom to top; a room may import from its own layer and from those below.
LAYERS = {
    **{"base": 0, "runs": 1, "weights": 1, "data": 2, "training": 3},
    **dict.fromkeys(["diagnostics", "evaluation", "experiments", "reporting", "deployment", "cluster"], 4),
}
COMMANDS = 4  # a room's `commands.py` (its subcommands) stands on top, whatever the room


def kit_modules(kit: Path = KIT) -> dict[str, Path]:
    return {".".join(path.relative_to(kit).with_suffix("").parts): path for path in sorted(kit.rglob("*.py"))}


def imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The kit modules `name` imports (relative imports: the kit imports itself that way).

    Imports under `if TYPE_CHECKING:` are left out: they never run (kit/__init__.py names every
    public name there for type checkers).
    """
    package = name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = package[: len(package) - (node.level - 1)]
        target = [*base, *(node.module.split(".") if node.module else [])]
        for candidate in [".".join(target) or "__init__", *(".".join([*target, alias.name]) for alias in node.names)]:
            if candidate in modules:
                found.add(candidate)
    return found


def layer(module: str) -> int | None:
    room = module.split(".")[0]
    if room not in LAYERS:
        return None  # kit/__init__.py: the table of public names, which imports nothing at load
    return COMMANDS if module.endswith(".commands") else LAYERS[room]


def graph(kit: Path = KIT) -> dict[str, set[str]]:
    modules = kit_modules(kit)
    return {name: imports(name, path, modules) for name, path in modules.items()}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in sorted(edges.items())
        for target in sorted(targets)
        if layer(module) is not None and layer(target) is not None and layer(target) > layer(module)
    ]


def circles(edges: dict[str, set[str]]) -> list[str]:
    found = []
    state: dict[str, str] = {}  # visiting / done

    def visit(module: str, path: list[str]) -> None:
        state[module] = "visiting"
        for target in sorted(edges[module]):
            if state.get(target) == "visiting":
                found.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


def test_every_room_is_in_a_layer() -> None:
    rooms = {path.name for path in KIT.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert rooms == set(LAYERS), f"a room without a layer (or a layer without its room): {rooms ^ set(LAYERS)}"


def test_no_import_goes_up_a_layer() -> None:
    assert upward_imports(graph()) == [], "\n".join(upward_imports(graph()))


def test_no_circle_of_imports() -> None:
    assert circles(graph()) == [], "\n".join(circles(graph()))


def test_the_rules_catch_an_upward_import_and_a_circle(tmp_path) -> None:
    """A planted kit: base imports training, two training modules import each other (one lazily)."""
    kit = tmp_path / "kit"
    for room in LAYERS:
        (kit / room).mkdir(parents=True)
        (kit / room / "__init__.py").write_text("")
    (kit / "base" / "files.py").write_text("from ..training.loop import fit\n")
    (kit / "training" / "loop.py").write_text("def fit():\n    from .other import x\n")
    (kit / "training" / "other.py").write_text("from .loop import fit\nx = 1\n")
    edges = graph(kit)
    assert upward_imports(edges) == ["base.files (layer 0) imports training.loop (layer 3)"]
    assert circles(edges) == ["training.loop -> training.other -> training.loop"]


def test_type_checkers_see_every_public_name_and_nothing_else() -> None:
    """kit/__init__.py loads PUBLIC's names lazily and imports the same ones under TYPE_CHECKING."""
    tree = ast.parse((KIT / "__init__.py").read_text())
    public = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PUBLIC"
    )
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {alias.name: node.module for node in block.body for alias in node.names}
    assert seen == public
