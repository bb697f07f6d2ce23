"""No import circles: the imports of calm_core/, daemon/ (as calmd) and bench/, function-level ones included,
read from the source (nothing is imported), must run one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"calm_core": ROOT / "calm_core", "calmd": ROOT / "daemon"}
BENCH = ROOT / "bench"  # scripts that import each other by bare name (bench/ is on sys.path)
# Circles tolerated (a circle whose modules all start with the names of one group): none.
BEING_BROKEN: tuple[tuple[str, ...], ...] = ()


def modules() -> dict[str, Path]:
    """Dotted module name -> file, as installed (daemon/ is calmd) and as bench scripts see each other."""
    found = {}
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    for path in BENCH.glob("*.py"):
        found[path.stem] = path
    return found


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules this one imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            targets.add(source)
            targets.update(f"{source}.{alias.name}" for alias in node.names)  # `from . import effects`
    # A module's own packages are imported before it, whatever it imports from them: no edge back to them.
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return {t for t in targets if t in known and t != module and t not in ancestors}


def circles() -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    known = modules()
    graph = {m: imported(m, p, known) for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def tolerated(circle: set[str]) -> bool:
    return any(all(m.startswith(group) for m in circle) for group in BEING_BROKEN)


def test_imports_run_one_way() -> None:
    wrong = [sorted(c) for c in circles() if not tolerated(c)]
    assert not wrong, f"import circles: {wrong}"


def test_the_circle_finder_sees_function_level_and_bare_bench_imports() -> None:
    known = modules()
    assert "calm_core.audio.effects" in imported("calm_core.audio.augment", known["calm_core.audio.augment"], known)
    assert "gpu" in imported("run", known["run"], known)  # `from gpu import run_gpu`, inside main()
    assert "timing" in imported("gpu_sizing", known["gpu_sizing"], known)


# calm_core's packages, from the bottom up: a package imports only from packages on lower layers.
LAYERS = {
    "calm_core.errors": 0,
    "calm_core.fingerprint": 0,
    "calm_core.audio": 1,
    "calm_core.messages": 1,
    "calm_core.backbones": 2,
    "calm_core.devsets": 2,
    "calm_core.testing": 2,
    "calm_core.features": 3,
    "calm_core.method": 4,
    "calm_core.evaluation": 5,
    "calm_core.cli": 6,
    "calm_core": 6,  # the package itself re-exports the classifier
}
FIT_PATH = ("calm_core.audio", "calm_core.backbones", "calm_core.features", "calm_core.method")
LIGHT = ("calmd.mqtt", "calmd.proxy", "calmd.client", "calmd.events", "calm_core.messages")


def package(module: str) -> str:
    """calm_core.method.fitting -> calm_core.method; calm_core -> calm_core; bench scripts -> bench."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return "bench"
    return ".".join(parts[:2])


def edges() -> list[tuple[str, str]]:
    known = modules()
    return [(m, t) for m, p in known.items() for t in sorted(imported(m, p, known))]


def test_calm_core_packages_import_downwards_only() -> None:
    wrong = []
    for source, target in edges():
        a, b = package(source), package(target)
        if a.startswith("calm_core") and b.startswith("calm_core") and a != b:
            if LAYERS[b] >= LAYERS[a]:
                wrong.append(f"{source} -> {target}")
    assert not wrong, "imports against calm_core's layers:\n" + "\n".join(wrong)


def test_the_library_imports_no_daemon_and_the_fit_path_no_dev_tools() -> None:
    wrong = []
    for source, target in edges():
        a, b = package(source), package(target)
        if a.startswith("calm_core") and not b.startswith("calm_core"):
            wrong.append(f"{source} -> {target}")  # calmd or a bench script
        if a.startswith(FIT_PATH) and b in ("calm_core.devsets", "calm_core.testing", "calm_core.evaluation"):
            wrong.append(f"{source} -> {target}")
    assert not wrong, "\n".join(wrong)


def test_bridges_and_subscribers_import_only_the_messages_from_the_library() -> None:
    wrong = [
        f"{s} -> {t}"
        for s, t in edges()
        if s.startswith(LIGHT)
        and t.startswith("calm_core")
        and package(t) not in ("calm_core.messages", "calm_core.errors", "calm_core")
    ]
    assert not wrong, "\n".join(wrong)
    assert package("calm_core.method.fitting") == "calm_core.method" and package("run") == "bench"


def test_capture_reads_only_its_config_and_audio() -> None:
    wrong = [
        f"{s} -> {t}"
        for s, t in edges()
        if s.startswith("calmd.capture")
        and not t.startswith(("calmd.capture", "calmd.config", "calm_core.audio", "calm_core.errors"))
    ]
    assert not wrong, "\n".join(wrong)
