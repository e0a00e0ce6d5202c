"""dvc.yaml's code deps cannot drift: every repo module a stage's script imports, directly or through
other repo modules, is listed in that stage's deps (otherwise an edit to it leaves results DVC calls
up to date). The imports are read from the source (ast), not by importing: a function-level import
counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "sparse_vqvae")  # the repo's own code a stage can import
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The repo file of module ``name`` (a package's __init__.py), or None outside the repo's packages."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = REPO.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, annotations: bool = False) -> set[str]:
    """The repo modules ``path`` imports, each with its parent packages (Python runs their __init__ too); with
    ``annotations``, those imported for annotations only (``if TYPE_CHECKING:``) too."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree if annotations else _without_type_checking(tree)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from package import module`
    with_parents = {".".join(name.split(".")[:i]) for name in found for i in range(1, name.count(".") + 2)}
    return {name for name in with_parents if module_file(name) is not None}


def _without_type_checking(tree: ast.Module) -> ast.Module:
    """The module less its ``if TYPE_CHECKING:`` blocks: imports for annotations only never run."""
    for node in ast.walk(tree):
        for field in ("body", "orelse"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                setattr(node, field, [child for child in block if not _is_type_checking(child)])
    return tree


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def runs_code(path: Path) -> bool:
    """False for a package __init__.py that holds only a docstring and constants: importing it runs nothing
    a stage's results could depend on."""
    if path.name != "__init__.py":
        return True
    body = ast.parse(path.read_text()).body
    inert = (ast.Expr, ast.Assign, ast.AnnAssign)
    return not all(isinstance(node, inert) and isinstance(getattr(node, "value", None), ast.Constant) for node in body)


def modules_run_by(script: Path) -> set[Path]:
    """Every repo file Python executes for ``script``: its imports, transitively."""
    seen, todo = {script}, [script]
    while todo:
        for name in imports_of(todo.pop()):
            path = module_file(name)
            if path not in seen:
                seen.add(path)
                todo.append(path)
    return {path for path in seen if runs_code(path)}


def covered(path: Path, deps: list[str]) -> bool:
    """A dep names the file itself or a folder above it."""
    return any(path == REPO / dep or (REPO / dep) in path.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_repo_module_a_stage_imports_is_one_of_its_deps(stage):
    spec = STAGES[stage]
    script = module_file(spec["cmd"].removeprefix("python -m "))
    assert script is not None, f"{stage}: cmd {spec['cmd']!r} is not `python -m <repo module>`"
    missing = sorted(str(path.relative_to(REPO)) for path in modules_run_by(script) if not covered(path, spec["deps"]))
    assert not missing, f"dvc.yaml: stage {stage} imports these but does not list them in its deps: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_lists_no_module_it_does_not_run(stage):
    """Deps follow what a stage really runs: a listed module it never imports would rerun it for nothing."""
    spec = STAGES[stage]
    run = modules_run_by(module_file(spec["cmd"].removeprefix("python -m ")))
    listed = [dep for dep in spec["deps"] if dep.endswith(".py")]
    extra = sorted(dep for dep in listed if REPO / dep not in run)
    assert not extra, f"dvc.yaml: stage {stage} lists modules it does not import: {extra}"


def test_preparing_data_does_not_depend_on_the_model_code():
    """An edit to the quantizers, the sparse coders or the priors must not rerun prepare_data."""
    run = modules_run_by(REPO / "tasks/prepare_data.py")
    model_code = {"quantizers.py", "vqvae.py", "pixelsnail.py", "code_store.py", "sparse_coding"}
    assert not {path for path in run if path.name in model_code or path.parent.name in model_code}


def test_the_library_has_no_import_circle():
    """Modules import down a hierarchy, annotations included: a circle (pixelsnail and the generation loop had one)
    means two modules that cannot be understood, or changed, apart."""
    modules = {module_name(path): path for path in (REPO / "sparse_vqvae").rglob("*.py")}
    edges = {name: {other for other in imports_of(path, annotations=True) if other in modules and other != name
                    and not name.startswith(f"{other}.")}  # a module's own package __init__ is no circle
             for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import circle: {' -> '.join(trail[trail.index(name):] + (name,))}"
        if name not in done:
            for other in sorted(edges[name]):
                visit(other, trail + (name,))
            done.add(name)

    for name in sorted(modules):
        visit(name, ())


def test_the_walk_skips_imports_for_annotations_only():
    assert REPO / "sparse_vqvae/vqvae.py" not in modules_run_by(REPO / "sparse_vqvae/code_store.py")


def test_the_walk_follows_relative_function_level_and_package_imports():
    """The walker itself: tasks/model_source.py imports .params inside a function, and the sparse_coding
    package's __init__ pulls in its modules."""
    assert REPO / "tasks/params.py" in modules_run_by(REPO / "tasks/model_source.py")
    run = modules_run_by(REPO / "sparse_vqvae/quantizers.py")
    assert {REPO / "sparse_vqvae/sparse_coding/__init__.py", REPO / "sparse_vqvae/sparse_coding/lars.py",
            REPO / "sparse_vqvae/codes.py"} <= run
    assert REPO / "tasks/__init__.py" not in modules_run_by(REPO / "tasks/layout.py")  # a docstring only
