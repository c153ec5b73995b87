"""The layering of docs/design.md holds: every module imports on its own in a fresh interpreter, and
the import graph of genfast (module-level and function-level imports alike) has no cycle."""
import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import genfast

ROOT = Path(genfast.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    found = {"genfast": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="genfast."):
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            found[info.name] = Path(spec.origin)
    return found


MODULES = _modules()


def _is_module(name: str) -> bool:  # the compiled extensions (genfast._C) too, built or not
    if name.split(".")[-1].startswith("_C"):
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # the parent is a module, not a package: `name` is an attribute
        return False


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the genfast modules it imports (a from-import of a submodule points at the submodule)."""
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.split(".")[0] == "genfast")
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                if base.split(".")[0] != "genfast":
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    edges.add(sub if sub in MODULES or _is_module(sub) else base)
        edges.discard(name)
        graph[name] = {e for e in edges if e in MODULES}
    return graph


def _cycles(graph):
    color, stack, found = {}, [], []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if color.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in color:
                visit(m)
        stack.pop()
        color[n] = 2

    for n in sorted(graph):
        if n not in color:
            visit(n)
    return found


def test_the_graph_sees_the_imports():
    graph = import_graph()
    assert "genfast.ops.diffusion" in graph["genfast.samplers.loop"]
    assert "genfast.cli.args" in graph["genfast.cli.compare"]  # a function-level import counts too
    assert len(MODULES) > 30


def test_no_import_cycle():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_ops_do_not_import_models_or_samplers():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith(("genfast.ops", "genfast.triton")):
            bad = [e for e in edges if e.startswith(("genfast.models", "genfast.samplers", "genfast.schedulers",
                                                     "genfast.training", "genfast.cli"))]
            assert not bad, f"{name} imports {bad}: ops sit below models and samplers"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # triton modules need triton; __main__ runs the command
    names = sorted(n for n in MODULES if not n.startswith("genfast.triton") and n != "genfast.__main__")
    code = ("import importlib, sys\nbad = []\n"
            f"for n in {names!r}:\n"
            "    for m in [k for k in sys.modules if k.startswith('genfast')]: del sys.modules[m]\n"
            "    try: importlib.import_module(n)\n"
            "    except Exception as e: bad.append(f'{n}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
