"""The package's layout: no import cycle in src/ (lazy imports inside functions count too), the kernel script is
made of src/infer/ and nothing else, and src/infer/ imports only what Kaggle's image has."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

from src import kernel

SRC = Path(__file__).resolve().parents[1] / "src"
# what a module of src/infer may import: the standard library, numpy, soundfile, soxr, its own package, and (inside
# functions) the runtimes Kaggle's image has or the kernel installs
KERNEL_TOP_LEVEL = {"numpy", "soundfile", "soxr"}
KERNEL_LAZY = {"torch", "onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime", "tensorflow"}
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")


def src_imports(path: Path) -> set[str]:
    """The src modules `path` imports anywhere in it (`from src.x import y` names src.x, or src.x.y if that is a
    module; `from src import y` names src.y)."""
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("src"):
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
            found |= {node.module} if node.module in modules else set()
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return found - {module_name(path), "src"}


def test_no_import_cycle_in_src():
    graph = {module_name(p): src_imports(p) for p in SRC.rglob("*.py")}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d):], d]))
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_the_kernel_script_is_made_of_src_infer_and_nothing_else():
    infer = {p.stem for p in (SRC / "infer").glob("*.py")} - {"__init__"}
    order = kernel.kernel_modules()
    assert set(order) == infer and order[-1] == "kernel_main"
    for i, name in enumerate(order):  # each module after those it imports
        deps = {m.rsplit(".", 1)[1] for m in src_imports(SRC / "infer" / f"{name}.py")}
        assert deps <= set(order[:i]), (name, deps)
    script = kernel.generate_script("birdclef-2025", "weights")
    assert [ln for ln in script.splitlines() if ln.startswith(("from src", "import src"))] == []
    assert [ln.split("# ---- src/")[1].split(".py")[0] for ln in script.splitlines() if "# ---- src/" in ln] == \
        [f"infer/{m}" for m in order]
    compile(script, "kernel.py", "exec")


def test_src_infer_imports_only_what_the_kaggle_image_has():
    stdlib = set(sys.stdlib_module_names)
    for path in (SRC / "infer").glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                root = name.split(".")[0]
                allowed = stdlib | KERNEL_TOP_LEVEL | {"src"} | (set() if id(node) in top else KERNEL_LAZY)
                assert root in allowed, f"{path.name} imports {name}" + ("" if id(node) in top else " (lazily)")
                if root == "src":
                    assert name.startswith("src.infer."), f"{path.name} imports {name}: outside src/infer"


def test_no_function_over_the_length_limit():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
