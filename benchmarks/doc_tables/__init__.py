"""The renderers of the documentation's generated tables and figures, by area (speed, photo codec, study), and
what they share: the results' JSON, number formats, the registry ``benchmarks/tables.py`` renders by name.
Standard library only."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


class TablesError(ValueError):
    """A marker this script cannot honour: unknown name, unclosed, or a figure that is not one line."""


@cache
def result(name: str) -> dict[str, Any]:
    """benchmarks/results/<name>.json."""
    return json.loads((RESULTS / f"{name}.json").read_text())


def number(x: float, digits: int = 0) -> str:
    """1234.5 -> '1,234' (digits=0), '1,234.50' (digits=2)."""
    return f"{x:,.{digits}f}"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def signed(percent: float | None, digits: int = 1, unit: str = "%") -> str:
    return "-" if percent is None else f"{percent:+.{digits}f}{unit}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[], str]] = {}


def renders(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def register(function: Callable[[], str]) -> Callable[[], str]:
        RENDERERS[name] = function
        return function
    return register


def render(name: str) -> str:
    if name not in RENDERERS:
        raise TablesError(f"no table or figure named {name!r}; known: {', '.join(sorted(RENDERERS))}")
    return RENDERERS[name]()



from . import photo, speed, study  # noqa: E402,F401  (importing each registers its renderers)
