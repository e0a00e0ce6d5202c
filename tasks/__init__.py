"""Pipeline stages: one module per dvc.yaml stage, wiring the library to DVC, MLflow and Ray.

dvc.yaml runs each stage as ``python -m tasks.<stage>``: whichever ``python`` comes first on PATH. One
without the project's packages would die in a traceback about torch; this check says in one line
which interpreter to use instead, or, for one that has the library but not the pipeline's stack, which
extra to install. (find_spec only looks the packages up: it imports none of them.)

A ``dvc exp run --temp`` or ``--queue`` experiment runs in a copy of the repository under ``.dvc/tmp/exps/``
that holds the C sources but not the git-ignored compiled extensions, and the stages import the library from
the copy: there the extensions are built in place first (about two seconds), so an experiment runs as fast
as ``dvc repro`` does. Where no compiler takes them, the library's PyTorch forms run, with its one warning.
"""

import sys as _sys
from importlib.util import find_spec as _find_spec
from pathlib import Path as _Path

_NEEDED = ("torch", "yaml", "lmdb", "mlflow", "ray")  # what the stages import; pyproject.toml names them
_LIBRARY = ("torch", "lmdb")  # of those, the library's own dependencies; the others come with its `pipeline` extra


def _check_interpreter() -> None:
    missing = [name for name in _NEEDED if _find_spec(name) is None]
    if not missing:
        return
    venv = _Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    if not set(missing) & set(_LIBRARY):
        how = ("install the library's pipeline extra into it: pip install -e '.[pipeline]' in the repository"
               + (f", or run the stages with {venv}" if venv.is_file() else " ('make install' makes .venv with it)"))
    elif venv.is_file():
        how = f"run the stages with {venv}: activate it with 'source .venv/bin/activate'"
    else:
        how = "create the project's environment with 'make install', then activate it with 'source .venv/bin/activate'"
    raise SystemExit(f"error: {_sys.executable} lacks {', '.join(missing)}, which the pipeline needs; {how} "
                     f"(or run 'make run')")


_check_interpreter()


def _build_extensions_in_experiment_copy() -> None:
    import subprocess
    from importlib.machinery import EXTENSION_SUFFIXES

    root = _Path(__file__).resolve().parents[1]
    if "/.dvc/tmp/exps/" not in root.as_posix() + "/" or not (root / "pyproject.toml").is_file():
        return
    built = [root / "sparse_vqvae" / "_incremental", root / "sparse_vqvae" / "sparse_coding" / "_rowwise"]
    if all(any(path.with_name(path.name + suffix).is_file() for suffix in EXTENSION_SUFFIXES) for path in built):
        return
    subprocess.run([_sys.executable, "-c", "from setuptools import setup; setup(script_args=['-q', 'build_ext', '--inplace'])"],
                   cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


_build_extensions_in_experiment_copy()
