"""The code maps' names, and the prior files named after them. No heavy imports: every pipeline stage and the CLI
read these names, and a stage's dependencies should not grow with them."""

from __future__ import annotations

from pathlib import Path

MAP_NAMES = ("top", "bottom")  # a two-map model's code maps, in the order the model, its stores and priors list them


def prior_file(folder: str | Path, index: int) -> Path:
    """Where a folder keeps the prior of code map ``index``: ``top.pt``, ``bottom.pt``."""
    return Path(folder) / f"{MAP_NAMES[index]}.pt"


def prior_files(folder: str | Path) -> list[Path]:
    """The priors a folder holds, top first; an error names the folder and the files when it holds none."""
    paths = [prior_file(folder, index) for index in range(len(MAP_NAMES))]
    found = [path for path in paths if path.is_file()]
    if not found or found != paths[: len(found)]:
        raise FileNotFoundError(f"no priors ({', '.join(path.name for path in paths)}) in {folder}: "
                                f"run the train_prior stage first")
    return found
