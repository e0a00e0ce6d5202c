"""The documentation's result tables, generated from benchmarks/results/*.json so that the prose cannot drift
from the measurements.

A Markdown file holds a table between two markers, and this script owns the text between them:

    <!-- table:prior -->
    | ... |
    <!-- /table:prior -->

A single figure inside a sentence is marked the same way on one line: ``<!-- fig:NAME -->-34.2%<!-- /fig:NAME -->``.

    python benchmarks/tables.py            # rewrite the marked tables of README.md, docs/*.md, benchmarks/README.md
    python benchmarks/tables.py --check    # exit 1 naming every table that differs from its JSON

A benchmark rewrites its JSON; running this script then rewrites the tables (tests/test_docs_tables.py fails
until it has). The renderers, a table or figure a name, live in benchmarks/doc_tables/ by area. Standard library
only: it reads JSON and writes text.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

from doc_tables import REPO, RENDERERS, TablesError, render

MARKER = re.compile(r"<!-- (?P<kind>table|fig):(?P<name>[a-z0-9_]+) -->(?P<body>.*?)<!-- /(?P=kind):(?P=name) -->",
                    re.S)
OPENING = re.compile(r"<!-- (?P<kind>table|fig):(?P<name>[a-z0-9_]+) -->")



def documents(repo: Path = REPO) -> list[Path]:
    """The Markdown files whose marked tables this script owns."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md")), repo / "benchmarks" / "README.md"]


def marked(text: str) -> list[str]:
    """The names of the tables and figures ``text`` marks, in order."""
    return [m["name"] for m in MARKER.finditer(text)]


def rewrite(text: str, render: Callable[[str], str]) -> str:
    """``text`` with the body of every marked table or figure replaced by ``render(name)``; everything outside
    the markers is left as it is."""
    openings = [m["name"] for m in OPENING.finditer(text)]
    closed = marked(text)
    if openings != closed:
        unclosed = [name for name in openings if name not in closed] or openings
        raise TablesError(f"marker without its closing <!-- /...:NAME -->: {', '.join(unclosed)}")

    def replace(match: re.Match) -> str:
        kind, name = match["kind"], match["name"]
        content = render(name).strip("\n")
        if kind == "fig" and "\n" in content:
            raise TablesError(f"fig:{name} must render on one line")
        body = f"\n{content}\n" if kind == "table" else content
        return f"<!-- {kind}:{name} -->{body}<!-- /{kind}:{name} -->"

    return MARKER.sub(replace, text)



def stale_in(text: str) -> list[str]:
    """``kind:name`` of every marked table or figure in ``text`` that differs from what its JSON renders."""
    return [f"{m['kind']}:{m['name']}" for m in MARKER.finditer(text) if rewrite(m.group(0), render) != m.group(0)]


def stale(paths: list[Path]) -> list[str]:
    """``path: kind:name`` of every stale table in the documents ``paths``."""
    return [f"{path.relative_to(REPO)}: {name}" for path in paths for name in stale_in(path.read_text())]


def unplaced(paths: list[Path]) -> list[str]:
    """Generated tables that no document shows."""
    shown = {name for path in paths for name in marked(path.read_text())}
    return sorted(set(RENDERERS) - shown)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming the stale tables")
    args = parser.parse_args()
    paths = [p for p in documents() if p.exists()]
    if args.check:
        problems = stale(paths) + [f"not shown in any document: {name}" for name in unplaced(paths)]
        for problem in problems:
            print(f"stale: {problem}" if not problem.startswith("not shown") else problem, file=sys.stderr)
        if problems:
            print("run `python benchmarks/tables.py` to rewrite them from benchmarks/results/", file=sys.stderr)
        return 1 if problems else 0
    for path in paths:
        text = path.read_text()
        new = rewrite(text, render)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(REPO)}")
    for name in unplaced(paths):
        print(f"not shown in any document: {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
