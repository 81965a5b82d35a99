"""The folder tree is the architecture: build_artifacts -> artifact folder -> runtime <- services / benchmarks.

Fast (no weights): static import graphs read with ast, plus one subprocess that imports the ONNX service.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

# Which project package may import which (lazily or not): the arrows of the tree.
ALLOWED = {
    "runtime": set(),
    "build_artifacts": {"runtime"},
    "services": {"runtime"},
    "benchmarks": {"runtime", "build_artifacts", "services", "loadtest"},
    "bulk_embed": {"runtime"},
}
PACKAGES = tuple(name for name in ALLOWED if (REPO / name / "__init__.py").is_file())


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules) | {"loadtest"}
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_packages_import_only_along_the_arrows():
    offences = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0] and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert not offences, "\n".join(offences)


def test_services_never_import_build_artifacts():
    offences = [
        f"{m} imports {t}"
        for m, ts in _graph().items()
        if m.startswith("services")
        for t in ts
        if t.startswith("build_artifacts")
    ]
    assert not offences


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in stack:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in done:
                visit(target, stack + [target], done)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module], done)
    assert not cycles, "\n".join(cycles)


def _top_level_packages_loaded_by(imports: str) -> set[str]:
    """The top-level packages in sys.modules after a fresh interpreter runs `import <imports>`."""
    code = f"import json, sys\nimport {imports}\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return {name.split(".")[0] for name in json.loads(result.stdout)}


def test_onnx_service_import_closure_holds_no_torch_and_no_build_pipeline():
    loaded = _top_level_packages_loaded_by(
        "services.onnx_api, services.onnx_api.embedder, services.common.app, services.common.serve, "
        "runtime.manifest, runtime.onnx_runner, runtime.tokenization"
    )
    assert not loaded & {"torch", "transformers", "build_artifacts", "benchmarks", "sentence_transformers"}


def test_service_catalog_loads_no_service_and_no_runtime():
    """Every consumer (load test, Locust image, Ray driver, scripts) imports the services' table for nothing."""
    loaded = _top_level_packages_loaded_by("services.catalog")
    assert not loaded & {"torch", "onnxruntime", "numpy", "fastapi", "pydantic", "runtime"}


def test_runtime_light_modules_need_neither_torch_nor_onnxruntime():
    loaded = _top_level_packages_loaded_by(
        "runtime, runtime.manifest, runtime.pooling, runtime.similarity, runtime.tokenization, "
        "runtime.torch_encoder, runtime.smoothquant, runtime.onnx_runner"
    )
    assert not loaded & {"torch", "transformers", "onnxruntime"}


PROJECT_ROOTS = (
    "runtime",
    "build_artifacts",
    "services",
    "benchmarks",
    "bulk_embed",
    "loadtest",
    "deploy",
    "scripts",
    "tests",
)


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defined_names(path: Path) -> set[str] | None:
    """Names a module binds at top level (None when it cannot be known statically: star import, __getattr__)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return None
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return None if "__getattr__" in names else names


def test_every_name_imported_from_the_project_exists():
    """Lazy imports inside functions (scripts, the docker check) fail only when that path runs: catch them here."""
    missing = []
    files = [p for root in PROJECT_ROOTS for p in sorted((REPO / root).rglob("*.py"))]
    assert len(files) > 50
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module.split(".")[0] not in PROJECT_ROOTS:
                continue
            source = _module_file(node.module)
            if source is None:
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}: no module {node.module}")
                continue
            defined = _defined_names(source)
            if defined is None:
                continue
            for alias in node.names:
                if alias.name not in defined and _module_file(f"{node.module}.{alias.name}") is None:
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.module} has no {alias.name}")
    assert not missing, "\n".join(missing)
