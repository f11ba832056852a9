"""The import rules of the product, checked from the code, and the package diagram drawn from it.

Every import counts: module level, inside ``if TYPE_CHECKING:``, and inside functions. Rules:

1. no import cycle between modules;
2. layers: ``__main__``/``cli``/``app`` -> ``controllers`` -> ``dataplane``, ``bgp``, ``k8s``
   (and the node-level services ``health``, ``metrics``, ``httpserver``, ``node``) -> the base
   (``config``, ``flags``, ``log``, ...; ``dataplane.exec`` is the bottom of the kernel side).
   A module imports only its own layer or lower;
3. ``dataplane``, ``bgp`` and ``k8s`` do not import each other (``dataplane.exec`` aside);
4. controllers never import each other (``controllers.base``, ``controllers.sync`` and
   ``controllers.shared`` are for all of them);
5. a controller's ``compile`` module (or package) imports no I/O, directly or through the
   project modules it imports;
6. the product never imports the lab (``kube_router_lab``), not even through ``importlib``;
7. no module of the product or the lab is over 500 lines, no function over 50.

Usage: ``python scripts/layers.py check`` (exit 1 listing every violation, or when the diagram in
docs/architecture.md is not the code's), ``python scripts/layers.py diagram`` (print the Mermaid
graph of the packages) or ``python scripts/layers.py doc`` (write it into docs/architecture.md,
between the ``layers:begin`` and ``layers:end`` comments; ``make arch-diagram``).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ROOT / "src" / "kube_router"
TOP = "kube_router"
LAB = "kube_router_lab"
ENTRY = ("__main__", "cli", "app")
SERVICES = ("dataplane", "bgp", "k8s", "health", "metrics", "httpserver", "node")
ISOLATED = ("dataplane", "bgp", "k8s")
SHARED_CONTROLLER_PARTS = ("base", "sync", "shared")
EXEC = "kube_router.dataplane.exec"
# What a pure compile module may not reach: stdlib and third-party I/O.
IO_MODULES = frozenset(
    {
        "asyncio",
        "subprocess",
        "aiohttp",
        "pyroute2",
        "grpc",
        "http",
        "urllib",
        "ssl",
        "shutil",
        "tempfile",
        "kubernetes_asyncio",
    }
)
# ``socket`` is not I/O for its constants and inet_pton; these calls are.
SOCKET_IO = ("socket.socket(", "socket.create_connection(", "socket.socketpair(", "getaddrinfo(")
GENERATED = "kube_router.bgp.api"  # gobgpd's stubs, generated at set-up
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 50
LAB_DIR = ROOT / "src" / LAB
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- layers:begin -->", "<!-- layers:end -->"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PRODUCT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    found = {module_name(p): p for p in PRODUCT.rglob("*.py")}
    return {m: p for m, p in found.items() if not m.startswith(GENERATED)}


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            yield name
            yield from (f"{name}.{alias.name}" for alias in node.names)


def imports_of(modules: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per module: the product modules it imports, and the top-level outside names."""
    inside: dict[str, set[str]] = defaultdict(set)
    outside: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for name in _imported(tree, module, path.name == "__init__.py"):
            if name == TOP or name.startswith(TOP + "."):
                target = _resolve(name, modules)
                if target not in ("", TOP, module) and not target.startswith(GENERATED):
                    inside[module].add(target)
            else:
                outside[module].add(name.split(".")[0])
    return inside, outside


def _resolve(name: str, modules: dict[str, Path]) -> str:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def layer(module: str) -> int:
    """3 entry, 2 controllers, 1 services, 0 base (``dataplane.exec`` is base too)."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    if module == EXEC:
        return 0
    if head in ENTRY:
        return 3
    if head == "controllers":
        return 2
    if head in SERVICES:
        return 1
    return 0


def controller_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "controllers" and parts[2] not in SHARED_CONTROLLER_PARTS:
        return parts[2]
    return None


def _is_compile(module: str) -> bool:
    parts = module.split(".")
    return controller_of(module) is not None and "compile" in parts[3:]


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def violations(modules: dict[str, Path]) -> list[str]:
    inside, outside = imports_of(modules)
    out = [f"import cycle: {' <-> '.join(comp)}" for comp in cycles(inside)]
    for module in sorted(modules):
        for target in sorted(inside.get(module, ())):
            out += _edge_problems(module, target)
        if _is_compile(module):
            for dep in sorted(_reach(inside, module)):
                via = "" if dep == module else f" through {dep}"
                bad = sorted(outside.get(dep, set()) & IO_MODULES)
                text = modules[dep].read_text()
                bad += [call.rstrip("(") for call in SOCKET_IO if call in text]
                out += [f"{module}: a compile module reaches I/O ({b}{via})" for b in bad]
        if (
            LAB in outside.get(module, set())
            or f'import_module("{LAB}' in modules[module].read_text()
        ):
            out.append(f"{module}: the product imports the lab ({LAB})")
    return out


def _edge_problems(module: str, target: str) -> list[str]:
    problems = []
    if layer(target) > layer(module):
        problems.append(f"{module} -> {target}: imports a higher layer")
    mine, theirs = controller_of(module), controller_of(target)
    if mine and theirs and mine != theirs:
        problems.append(f"{module} -> {target}: controllers never import each other")
    head, other = (f"{m}.".split(".")[1] for m in (module, target))
    if head in ISOLATED and other in ISOLATED and head != other and target != EXEC:
        problems.append(f"{module} -> {target}: {head} and {other} are side by side")
    return problems


def size_problems(paths: Iterable[Path]) -> list[str]:
    """Files over MAX_FILE_LINES lines and functions over MAX_FUNCTION_LINES."""
    out = []
    for path in sorted(paths):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_FILE_LINES:
            out.append(f"{path.name}: {lines} lines (at most {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path.name}: {node.name} is {length} lines")
    return out


def package_of(module: str) -> str:
    """The diagram's box: a controller, a service package, the entry modules, or the base."""
    parts = module.split(".")[1:]
    if parts and parts[0] == "controllers" and len(parts) > 1:
        return "controllers." + parts[1]
    if module == EXEC:
        return "dataplane.exec"
    if layer(module) == 0:
        return "base"
    return parts[0] if parts else TOP


def diagram(modules: dict[str, Path]) -> str:
    inside, _ = imports_of(modules)
    edges: set[tuple[str, str]] = set()
    for module, targets in inside.items():
        for target in targets:
            a, b = package_of(module), package_of(target)
            if a != b:
                edges.add((a, b))
    boxes = sorted({box for edge in edges for box in edge})
    lines = ["```mermaid", "graph TD"]
    lines += [f'    {_id(box)}["{box}"]' for box in boxes]
    lines += [f"    {_id(a)} --> {_id(b)}" for a, b in sorted(edges)]
    lines.append("```")
    return "\n".join(lines) + "\n"


def _id(box: str) -> str:
    return box.replace(".", "_").strip("_")


def doc_with(text: str, graph: str) -> str:
    """``text`` with the block between the markers replaced by ``graph``."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{DOC}: no {BEGIN} ... {END} block")
    return f"{head}{BEGIN}\n{graph}{END}{tail}"


def main(argv: list[str]) -> int:
    modules = product_modules()
    command = argv[1:]
    if command == ["diagram"]:
        sys.stdout.write(diagram(modules))
        return 0
    if command == ["doc"]:
        DOC.write_text(doc_with(DOC.read_text(), diagram(modules)))
        return 0
    if command != ["check"]:
        sys.stderr.write("usage: layers.py check|diagram|doc\n")
        return 2
    problems = violations(modules)
    problems += size_problems([*modules.values(), *LAB_DIR.rglob("*.py")])
    text = DOC.read_text()
    if doc_with(text, diagram(modules)) != text:
        problems.append(f"{DOC.name}: the package diagram is stale (make arch-diagram)")
    for problem in problems:
        print(problem)
    print(f"layers: {len(modules)} modules, {len(problems)} violations")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
