"""The import rules of docs/architecture.md, enforced: imports point down the layers, and no project modules
import each other in a cycle (function-local imports count too: a cycle hidden in a function is still one).

    cli  ->  serving, clients, handlers, zoo, proto        (top: the `zoo` command and the processes it runs)
    serving -> proto, zoo.contract, zoo.streaming, zoo.tensors (the gateway never loads torch or models)
    clients -> proto                                       (the SDK speaks only the wire contract)
    handlers -> zoo                                        (archives carry handlers + model code only)
    zoo, proto -> nothing of the project's but themselves
"""

from __future__ import annotations

from pathlib import Path

import pytest

import proto
from zoo.mar import imported_names

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "serving", "clients", "handlers", "zoo", "proto")
ALLOWED: dict[str, tuple[str, ...]] = {
    "cli": PACKAGES,
    "serving": ("serving", "proto", "zoo.contract", "zoo.streaming", "zoo.tensors"),
    "clients": ("clients", "proto"),
    "handlers": ("handlers", "zoo"),
    "zoo": ("zoo",),
    "proto": ("proto",),
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[module] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name refers to (``zoo.weights.load_strict`` -> ``zoo.weights``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    return {m for m in map(_resolve, imported_names(path, module)) if m and m != module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_package_is_covered_by_the_rules() -> None:
    assert {m.split(".")[0] for m in MODULES} == set(ALLOWED)


def test_imports_point_down_the_layers() -> None:
    bad = []
    for module, targets in GRAPH.items():
        allowed = ALLOWED[module.split(".")[0]]
        for target in sorted(targets):
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the layers (docs/architecture.md):\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycles_between_project_modules() -> None:
    # a package's __init__ that re-exports its own modules is not a cycle worth reporting
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
             for m, ts in GRAPH.items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_shipped_descriptor_set_matches_the_proto_sources() -> None:
    """proto/descriptors.binpb is what `zoo gen-protos` compiles from proto/*.proto today."""
    pytest.importorskip("grpc_tools")
    from google.protobuf import descriptor_pb2

    assert not proto.is_stale(), "run `zoo gen-protos` after editing proto/*.proto"
    shipped = descriptor_pb2.FileDescriptorSet.FromString(proto.DESCRIPTOR_SET.read_bytes())
    assert shipped == descriptor_pb2.FileDescriptorSet.FromString(proto.compile_descriptor_set())
