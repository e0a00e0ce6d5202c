"""README.md's Python examples run as written: every ```python block, in order, in one namespace (a block may
use what an earlier one made), in a temporary working folder. A traceback names the README's own lines."""

from __future__ import annotations

import re

import pytest

from .pipeline_workspace import REPO

README = REPO / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        blocks.append((text.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return blocks


def test_the_blocks_are_found_with_their_line_numbers():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x\n")]


@pytest.mark.slow  # trains a small model and its priors (seconds, not minutes: keep the examples tiny)
def test_the_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3  # sparse coding, the model, the prior and the codec
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for line, code in blocks:
        exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)


def test_the_readme_gives_the_two_commands_and_stays_a_guide():
    text = README.read_text()
    assert "make run" in text and "make test" in text  # a fresh machine's two commands (CI looks for them)
    # Measurement logs, provenance and formats belong in docs/ and benchmarks/README.md, not here.
    assert len(text.splitlines()) <= 250, "README.md has grown past 250 lines: move the detail to docs/"
