"""The package's plan, checked: imports go down the layers only, no cycle, no private name crosses a module,
and only `serving` imports Triton's Python-backend API.

The layers, bottom up (README, "Where to start reading"):
    errors, transfer  <  kernels  <  quantization  <  layers  <  models  <  parallel  <  tokenizer
    <  structured  <  engine  <  serving  <  offline_bench  <  cli
A module may import its own subpackage and anything below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "python_backend" / "qwen_triton"
LAYERS = [
    "errors",
    "transfer",
    "kernels",
    "quantization",
    "layers",
    "models",
    "parallel",
    "tokenizer",
    "structured",
    "engine",
    "serving",
    "offline_bench",
    "cli",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) for every qwen_triton import in the file, lazy ones included."""
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            if base.startswith("qwen_triton"):
                found.append((base, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("qwen_triton")]
    return found


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_every_top_level_part_has_a_layer():
    tops = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.rglob("*.py")}
    assert tops - {"__init__"} <= set(LAYERS), f"place these in LAYERS: {tops - {'__init__'} - set(LAYERS)}"


def test_imports_go_down_the_layers_only():
    upward = []
    for module, path in all_modules().items():
        if module == "qwen_triton":
            continue
        for target, names in imports_of(path):
            targets = [target] if target != "qwen_triton" else [f"qwen_triton.{n}" for n in names]
            upward += [f"{module} -> {t}" for t in targets if layer_of(t) > layer_of(module)]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    modules = all_modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for target, names in imports_of(path):
            candidates = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules] or [target]
            graph[module].update(c for c in candidates if c in modules and c != module)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_no_private_name_is_imported_across_modules():
    private = [
        f"{module_name(path)} imports {target}.{name}"
        for path in PACKAGE.rglob("*.py")
        for target, names in imports_of(path)
        for name in names
        if name.startswith("_") and name != "__version__"
    ]
    assert not private, "\n".join(private)


def test_only_serving_imports_the_triton_python_backend_api():
    users = [
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if "triton_python_backend_utils" in path.read_text() and not module_name(path).startswith("qwen_triton.serving")
    ]
    assert not users, f"outside serving/: {users}"
