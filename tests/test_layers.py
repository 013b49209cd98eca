"""The package reads top-down: every import goes to the same or a lower layer, and no
module imports another in a cycle.

Layers, lowest first (``sam3_lora_plugin.<first part>``):

1. ``lora``: LoRA layers, config, selection, injection and its report (torch only);
2. ``models`` (SAM3 model plumbing) and ``data`` (datasets: synthetic set, checks,
   converters);
3. ``adapters``: adapter state keys, metadata and fingerprint, file format, merge, load;
4. ``trainer``: the SAM3 Trainer integration (wrapper, param groups, checkpoint hooks,
   CPU fallbacks, job-array runner, config composition and checks);
5. ``evaluation`` and ``inference``: the libraries behind the tools;
6. ``cli``: the tools' code;
7. entry points (``sam3_lora_plugin.<tool>`` modules and ``__main__`` modules) and
   ``testing`` (test support, never imported by the product).

Function-local imports count like module-level ones (they may keep ``--help`` cheap, but
never dodge the layering). The package ``__init__`` resolves its exports lazily by string
and is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "sam3_lora_plugin"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
LAYERS = {"lora": 1, "models": 2, "data": 2, "adapters": 3, "trainer": 4, "evaluation": 5,
          "inference": 5, "cli": 6, "testing": 7}
ENTRY_LAYER = 7


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def get_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def get_layer(module: str, path: Path) -> int:
    parts = module.split(".")
    if path.name == "__main__.py" or (len(parts) == 2 and path.name != "__init__.py"
                                      and parts[1] not in LAYERS):
        return ENTRY_LAYER
    return LAYERS.get(parts[1])


def get_imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports, anywhere in its body (resolved to modules)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in modules:  # `from pkg import func` -> pkg
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith(PACKAGE):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else base)
    return found


MODULES = get_modules()
GRAPH = {m: get_imports(m, p, MODULES) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    unknown = [m for m, p in MODULES.items() if m != PACKAGE and m.count(".") >= 1
               and get_layer(m, p) is None]
    assert not unknown and len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != PACKAGE))
def test_no_upward_import(module):
    layer = get_layer(module, MODULES[module])
    upward = sorted(f"{dep} (layer {get_layer(dep, MODULES[dep])})" for dep in GRAPH[module]
                    if dep != PACKAGE and get_layer(dep, MODULES[dep]) > layer)
    assert not upward, f"{module} (layer {layer}) imports from above: {upward}"


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first repeated at the end), or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_import_cycle():
    # A package's __init__ importing its own submodules is not a cycle by itself.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in GRAPH.items()}
    assert find_cycle(graph) == []


def test_checker_sees_upward_imports_and_cycles(tmp_path):
    """The checks can fail: an upward import and a cycle in made-up modules are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    fake = {"sam3_lora_plugin.lora.x": tmp_path / "x.py", "sam3_lora_plugin.cli.y": tmp_path / "y.py"}
    fake["sam3_lora_plugin.lora.x"].write_text("def f():\n    from sam3_lora_plugin.cli.y import g\n")
    fake["sam3_lora_plugin.cli.y"].write_text("")
    deps = get_imports("sam3_lora_plugin.lora.x", fake["sam3_lora_plugin.lora.x"], fake)
    assert deps == {"sam3_lora_plugin.cli.y"}
    assert get_layer("sam3_lora_plugin.cli.y", fake["sam3_lora_plugin.cli.y"]) > get_layer(
        "sam3_lora_plugin.lora.x", fake["sam3_lora_plugin.lora.x"])
