"""`dvc plots show` renders offline: the page made with the repo's template (tasks/offline_plots.py) holds
Vega, Vega-Lite and Vega-Embed inline and loads no remote script, and headless Chromium (Debian's
`chromium`, where installed), with every host name unresolvable, draws every plot dvc.yaml defines."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from flows.workspace import make_workspace
from tasks.offline_plots import write_template

from .pipeline_workspace import REPO, dvc

PLOTS = [next(iter(entry)) for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]]


class Scripts(HTMLParser):
    """The <script> elements of a page: their attributes and inline text."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[dict, str]] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "script":
            self.found.append((dict(attrs), ""))
            self._inside = True

    def handle_endtag(self, tag: str) -> None:
        self._inside = self._inside and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.found[-1] = (self.found[-1][0], self.found[-1][1] + data)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """`dvc plots show` with the template, in a workspace holding the repo's committed plot files."""
    root = make_workspace(tmp_path_factory.mktemp("plots") / "ws")
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    for entry in spec["plots"]:
        for path in next(iter(entry.values()))["y"]:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, root / path)
    template = write_template(root / "template.html")
    dvc("plots", "show", "--html-template", str(template), "-o", "out", cwd=root)
    return root / "out/index.html"


@pytest.mark.slow  # DVC
def test_the_page_loads_no_remote_script(page):
    html = page.read_text()
    parser = Scripts()
    parser.feed(html)
    assert all("src" not in attrs for attrs, _ in parser.found), [a for a, _ in parser.found if "src" in a]
    assert not re.search(r"<(?:script|link|img|iframe)[^>]+(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html)
    libraries = parser.found[0][1]
    assert "window.vegaEmbed=" in libraries and len(libraries) > 500_000  # the three libraries, inline
    assert embedded(page) >= len(PLOTS)  # a div per plot (dvc.yaml's top-level plots, and its stages' plot files)


def embedded(page: Path) -> int:
    """How many plots the page draws: one vegaEmbed call each."""
    return page.read_text().count("vegaEmbed('#")


def test_the_repo_uses_the_template_make_install_writes():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc/config")
    configured = (REPO / ".dvc" / config["plots"]["html_template"]).resolve()
    makefile = (REPO / "Makefile").read_text()
    written = re.search(r"^PLOTS_TEMPLATE := \$\(VENV\)/(\S+)$", makefile, re.M).group(1)
    venv = re.search(r"^VENV := (\S+)$", makefile, re.M).group(1)
    assert configured == (REPO / venv / written).resolve()
    assert "\t$(PYTHON) -m tasks.offline_plots $(PLOTS_TEMPLATE)\n" in makefile


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow  # DVC and a browser
@pytest.mark.skipif(chromium() is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_headless_chromium_draws_every_plot_offline(page, tmp_path):
    """Vega-Embed draws each plot (an svg or canvas of class "marks"); with every host name unresolvable,
    only inline scripts can."""
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
                           "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=300, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    drawn = re.findall(r"<(?:svg|canvas)[^>]*class=\"marks\"", done.stdout)
    assert len(drawn) == embedded(page), (len(drawn), done.stdout[-2000:], done.stderr[-2000:])
