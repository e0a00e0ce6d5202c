"""The documentation's result tables equal what benchmarks/tables.py renders from benchmarks/results/*.json: a
number edited by hand, or a benchmark rerun without `python benchmarks/tables.py`, fails here."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from .benchmark_scripts import benchmark_script
from .pipeline_workspace import REPO


@pytest.fixture(scope="module")
def tables():
    with benchmark_script("tables") as module:
        yield module


def fake(name: str) -> str:
    return {"t": "| a |\n|---|\n| 1 |", "f": "42"}[name]


def test_rewrite_replaces_only_the_text_between_the_markers(tables):
    text = ("intro 7\n<!-- table:t -->\nstale | 9 |\n<!-- /table:t -->\nmiddle 8\n"
            "a figure: <!-- fig:f -->0<!-- /fig:f --> dB, end\n")
    expected = ("intro 7\n<!-- table:t -->\n| a |\n|---|\n| 1 |\n<!-- /table:t -->\nmiddle 8\n"
                "a figure: <!-- fig:f -->42<!-- /fig:f --> dB, end\n")
    assert tables.rewrite(text, fake) == expected
    assert tables.rewrite(expected, fake) == expected  # idempotent: a current document is left as it is
    assert tables.marked(text) == ["t", "f"]
    # Empty markers (a new table) are filled.
    assert tables.rewrite("<!-- table:t -->\n<!-- /table:t -->", fake) == "<!-- table:t -->\n| a |\n|---|\n| 1 |\n<!-- /table:t -->"


def test_bad_markers_are_errors_that_name_them(tables):
    with pytest.raises(tables.TablesError, match="closing.*t"):
        tables.rewrite("<!-- table:t -->\n| old |\n", fake)
    with pytest.raises(tables.TablesError, match="no table or figure named 'nope'"):
        tables.rewrite("<!-- table:nope -->\n<!-- /table:nope -->", tables.render)
    with pytest.raises(tables.TablesError, match="fig:t must render on one line"):
        tables.rewrite("<!-- fig:t -->x<!-- /fig:t -->", fake)


def test_every_table_renders_from_its_json(tables):
    for name in tables.RENDERERS:
        assert tables.render(name).strip(), name


def test_the_docs_tables_are_current(tables):
    paths = [path for path in tables.documents() if path.exists()]
    assert tables.stale(paths) == [], "run `python benchmarks/tables.py` to rewrite them from benchmarks/results/"
    assert tables.unplaced(paths) == [], "a generated table no document shows"


def test_a_number_edited_by_hand_is_found(tables):
    readme = (REPO / "README.md").read_text()
    row = readme.index("| `photo`", readme.index("<!-- table:zoo -->"))
    assert tables.stale_in(readme) == []
    assert tables.stale_in(readme[:row] + readme[row:].replace("| 1-10 |", "| 1-9 |", 1)) == ["table:zoo"]
    figure = readme.index("<!-- fig:photo_images -->") + len("<!-- fig:photo_images -->")
    assert tables.stale_in(readme[:figure] + "8" + readme[figure + 1:]) == ["fig:photo_images"]


def test_the_check_command_passes():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tables.py"), "--check"], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_the_synthesis_words_count_a_model_once_and_read_complete_seeds_only(tables, tmp_path, monkeypatch):
    """The samples' seed spread counts a model the study lists under two families (vanilla's 256 entries are rvq's
    one stage) once, at the true median; the verdict in words leaves out a seed whose CIFAR-10 models are not all in."""
    study = json.loads((REPO / "benchmarks" / "results" / "rate_distortion_study.json").read_text())
    synthesis = study["summary"]["synthesis_cifar10"]

    def rows(family: str, fds: tuple[float, float], **settings) -> list[dict]:
        chosen = [r for r in synthesis[family] if all(r["settings"][k] == v for k, v in settings.items())]
        return [{**r, "fd": fds[r["seed"]], "bpp_prior": 0.5} for r in chosen if r["seed"] in (0, 1)]

    study["summary"]["synthesis_cifar10"] = {"vanilla": rows("vanilla", (100.0, 110.0), num_atoms=256),
                                             "rvq": rows("rvq", (100.0, 110.0), stages=1),
                                             "qmp": rows("qmp", (90.0, 130.0), n_nonzero=1)}
    study["summary"]["synthesis_at_equal_bits"]["best_sparse"] = {
        "0": {"family": "qmp", "margin": -5.0, "at_most_vanilla": True},
        "1": {"family": "qmp", "margin": 3.0, "at_most_vanilla": False}}
    study["summary"]["missing"] = [{"set": "cifar10", "family": "vanilla", "settings": {}, "seed": 1}]
    (tmp_path / "rate_distortion_study.json").write_text(json.dumps(study))
    renderers = importlib.import_module("doc_tables")  # where the results are read
    monkeypatch.setattr(renderers, "RESULTS", tmp_path)
    renderers.result.cache_clear()
    try:
        spread = tables.render("study_synthesis_seed_spread")
        seeds = tables.render("study_synthesis_seeds")
    finally:
        renderers.result.cache_clear()
    assert spread.startswith("up to 40.0 (qmp K=1") and "25.0 at the median of the 2 models" in spread
    assert seeds == "seed 0: quantised pursuit, FD 5.0 below vanilla's best (at most vanilla's FD on every seed: yes)"
