"""The core's boundary (docs/architecture.md): ``framework/`` imports nothing from ``plugins/`` (it knows the
built-in plugin modules only as the strings of ``plugin_manager.BUILTIN_MODULES``), names no plugin, dataset,
model or spec outside docstrings and comments, and its modules import each other without a cycle, with every
core-internal import at module level (a function-level import would hide a cycle from ``import``).

The names come from the registries themselves (every registered plugin and plugin command) plus the domain words
of the built-in plugins, so a plugin added later is guarded too.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from framework.plugin_manager import BUILTIN_MODULES, collect_commands, collect_registries

CORE = Path(__file__).resolve().parents[2] / "framework"
# what the built-in plugins are about; none of it belongs in the core's code
DOMAIN_WORDS = {"mp3net", "mnist", "piano", "midi", "music21", "soundfont", "transcriber", "maestro", "mdct",
                "psychoacoustic", "dcgan", "wgan"}
SPEC_FILE = re.compile(r"experiments/\S+\.ya?ml")  # one particular spec (the folder name alone is the layout)
OWN_NAMES = ("mp3net-framework",)  # the distribution's own name (pip install 'mp3net-framework[energy]')
SHORT_OK = 4  # registered names shorter than this ("raw", "bce") are ordinary words in code


def core_files() -> list[Path]:
    files = sorted(CORE.glob("*.py"))
    assert len(files) > 10, f"no core modules found under {CORE}"
    return files


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks count as module level
        if isinstance(node, ast.If):
            top |= {id(n) for n in node.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "framework":  # `from framework import x`: x is a module or a name of __init__
                out += [(f"framework.{a.name}" if (CORE / f"{a.name}.py").is_file() else "framework", id(node) in top)
                        for a in node.names]
            else:
                out.append((node.module, id(node) in top))
    return out


def code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the string literals and identifiers of ``path`` that are not docstrings or comments."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.add(first.lineno)
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.STRING, tokenize.NAME) and tok.start[0] not in docstrings:
            out.append((tok.start[0], tok.string))
        elif tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            out.append((tok.start[0], tok.string))
    return out


def test_core_imports_nothing_from_plugins():
    bad = [f"{p.name}: import {m}" for p in core_files() for m, _ in imports(p)
           if m == "plugins" or m.startswith("plugins.")]
    assert not bad, "framework/ imports plugin code:\n" + "\n".join(bad)


def test_core_names_no_plugin():
    names = {e.name for reg in collect_registries().values() for e in reg} | set(collect_commands())
    words = {n.lower() for n in names if len(n) >= SHORT_OK} | DOMAIN_WORDS
    pattern = re.compile(r"(?<![a-z0-9])(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True))
                         + r")(?![a-z0-9])")
    builtin = set(BUILTIN_MODULES)
    bad = []
    for path in core_files():
        for line, text in code_strings(path):
            if text.strip("'\"") in builtin:  # the built-in module list, as strings, is the one allowed mention
                continue
            low = text.lower()
            for own in OWN_NAMES:
                low = low.replace(own, "")
            hit = pattern.search(low.replace("_", " ").replace("-", " ")) or pattern.search(low) \
                or SPEC_FILE.search(low)
            if hit:
                bad.append(f"framework/{path.name}:{line}: {hit.group(0)!r} in {text[:80]}")
    assert not bad, "the core names plugins / their data (move it into a plugin or a spec):\n" + "\n".join(bad)


def core_graph() -> dict[str, set[str]]:
    graph = {}
    for path in core_files():
        deps = set()
        for module, _ in imports(path):
            if module.startswith("framework."):
                deps.add(module.split(".")[1])
            elif module == "framework":
                deps.add("__init__")
        graph[path.stem] = deps - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep] if dep in stack else [node, dep]
            if dep not in state and (cycle := visit(dep, stack + [dep])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_finds_one():  # the checker itself, on a graph with and without a cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_core_has_no_import_cycle():
    cycle = find_cycle(core_graph())
    assert cycle is None, "import cycle in framework/ (function-level imports counted): " + " -> ".join(cycle)


def test_core_imports_are_module_level():
    bad = [f"{p.name}: {m}" for p in core_files() for m, top in imports(p)
           if not top and (m == "framework" or m.startswith("framework."))]
    assert not bad, "function-level imports of core modules (they hide cycles; import at the top):\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(BUILTIN_MODULES))
def test_builtin_modules_are_plugins(module):  # the strings the core may hold name real plugin modules
    assert module.startswith("plugins.") and (CORE.parent / (module.replace(".", "/") + ".py")).is_file()
