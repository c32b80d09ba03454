"""The package's import graph stays layered: no cycle, no import from a lower layer to a
higher one (docs/architecture.md).

Every ``import`` / ``from ... import`` in ``src/autoprompt_seg`` counts, including the lazy
ones inside functions (they run too, just later), except those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "autoprompt_seg"
SRC = Path(__file__).resolve().parents[1] / "src" / PKG

#: Layer of each top-level module or sub-package; a module may import its own layer or a
#: lower one. ``types``/``errors`` < ``io`` < ``detect``/``models``/``segment`` <
#: ``pipeline``/``export`` < ``bench``/``listen``/``train`` < ``cli``.
LAYERS: dict[str, int] = {
    "__init__": 0, "__main__": 0, "types": 0, "errors": 0, "config": 0, "backends": 0,
    "options": 0,
    "io": 1, "weights": 1, "registry": 1, "data": 1, "synthetic": 1,
    "detect": 2, "models": 2, "segment": 2,
    "pipeline": 3, "export": 3, "predict": 3, "datasets": 3, "transplant": 3,
    "bench": 4, "listen": 4, "train": 4,
    "cli": 5,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str) -> set[str]:
    """The package modules that ``module`` (the file ``path``) imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name.split(".")[0] == PKG)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != PKG:
                    continue
                out.add(target)
                # ``from .pkg import module`` imports that module
                for a in child.names:
                    if (SRC.parent / (target + "." + a.name).replace(".", "/")).with_suffix(
                            ".py").exists() or (SRC.parent / (target + "." + a.name).replace(
                                ".", "/") / "__init__.py").exists():
                        out.add(target + "." + a.name)
            visit(child)

    visit(tree)
    out.discard(module)
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {m: {t for t in _imports(p, m) if t in mods} for m, p in mods.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m in _graph()} - set(LAYERS))
    assert not missing, f"give these modules a layer in tests/test_layering.py: {missing}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = []
    for m, targets in sorted(_graph().items()):
        for t in sorted(targets):
            lm, lt = LAYERS.get(_top(m), 99), LAYERS.get(_top(t), 99)
            if lt > lm and _top(t) != _top(m):
                upward.append(f"{m} (layer {lm}) imports {t} (layer {lt})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    # Tarjan's strongly connected components; a component of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    import sys
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    # a package's __init__ importing its own modules, which import the package, is the
    # usual Python shape, not a design cycle: drop package-to-own-child edges
    real = []
    for comp in cycles:
        pk = {c for c in comp if any(o.startswith(c + ".") for o in comp)}
        if pk and all(any(c.startswith(p + ".") or c == p for p in pk) for c in comp) and \
                len(pk) == 1:
            continue
        real.append(comp)
    assert not real, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in real)


#: The only bench modules that may import train/: a study (bench/study.py) trains its
#: few-shot and fine-tune models before benchmarking them. The arrow runs one way only.
BENCH_MODULES_THAT_TRAIN = {"autoprompt_seg.bench.study"}


def test_train_does_not_import_bench():
    bad = [f"{m} imports {t}" for m, targets in sorted(_graph().items())
           if _top(m) == "train" for t in sorted(targets) if _top(t) == "bench"]
    assert not bad, "train/ must take its data from datasets/, never bench/:\n" + \
        "\n".join(bad)


def test_bench_imports_train_only_where_it_trains():
    graph = _graph()
    bad = [f"{m} imports {t}" for m, targets in sorted(graph.items())
           if _top(m) == "bench" and m not in BENCH_MODULES_THAT_TRAIN
           for t in sorted(targets) if _top(t) == "train"]
    assert not bad, "only bench/study.py may import train/:\n" + "\n".join(bad)
    # and the one that does really uses it (else drop it from the allowed set)
    for m in BENCH_MODULES_THAT_TRAIN:
        assert any(_top(t) == "train" for t in graph[m]), m


def test_datasets_sit_below_bench_and_train():
    graph = _graph()
    assert LAYERS["datasets"] < min(LAYERS["bench"], LAYERS["train"])
    assert not (SRC / "bench" / "datasets.py").exists(), "one home: datasets/, not bench/"
    users = {_top(m) for m, targets in graph.items() for t in targets if _top(t) == "datasets"}
    assert {"bench", "train"} <= users


def test_no_module_over_600_lines():
    long = sorted(f"{p.relative_to(SRC)}: {n}" for p in SRC.rglob("*.py")
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600)
    assert not long, "modules over 600 lines:\n" + "\n".join(long)


@pytest.mark.parametrize("bad,expected", [
    ("from autoprompt_seg.cli import main", "autoprompt_seg.cli"),
])
def test_the_walker_sees_absolute_imports(tmp_path, bad, expected):
    f = tmp_path / "m.py"
    f.write_text(bad + "\n")
    assert expected in _imports(f, "autoprompt_seg.io.m")
