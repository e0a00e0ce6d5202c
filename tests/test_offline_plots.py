"""`dvc plots show` draws the plots dvc.yaml's top-level `plots:` section defines and nothing else, each titled,
with named axes, and the rate-distortion plot one colour per codec, and shows evaluate's picture grids beside
them; it renders offline: the page made with the
repo's template (tasks/offline_plots.py) holds Vega, Vega-Lite and Vega-Embed inline and loads no remote script,
and headless Chromium (Debian's `chromium`, where installed), with every host name unresolvable, draws every
plot, every series of it, with its title and axis titles."""

from __future__ import annotations

import configparser
import csv
import json
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from flows.workspace import make_workspace
from sparse_vqvae.rate_distortion import COLUMNS, write_table
from tasks.offline_plots import write_template

from .pipeline_workspace import REPO, dvc

SPEC = yaml.safe_load((REPO / "dvc.yaml").read_text())
ENTRIES = {name: props for entry in SPEC["plots"] for name, props in entry.items()}
PLOTS = {name: props for name, props in ENTRIES.items() if props}  # the curves, drawn from CSVs by a template
PICTURES = [name for name, props in ENTRIES.items() if not props]  # folders of PNGs, shown as they are
TEMPLATES = REPO / ".dvc/plots"  # where DVC looks for a template that a plot names


def template(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text())


def series(name: str, root: Path = REPO) -> set[str]:
    """What one plot should draw as its coloured lines: its y columns, or for the rate-distortion plot the
    codecs of its CSV (the field its template colours by)."""
    props = PLOTS[name]
    ((path, fields),) = props["y"].items()
    colour = template(props["template"])["encoding"]["color"]["field"]
    if colour == "field":
        return set(fields)
    with open(root / path) as handle:
        return {row[colour] for row in csv.DictReader(handle)}


def test_only_the_top_level_plots_are_plots_and_each_is_labelled():
    """A stage's `plots:` entry is drawn again with DVC's default template (by row index, titled with its path,
    a y axis named after one column): the CSVs are outs git tracks, and only the top-level definitions draw."""
    files = set()
    for stage, body in SPEC["stages"].items():
        assert "plots" not in body, stage
        files |= {next(iter(o)) for o in body.get("outs", []) if isinstance(o, dict) and o[next(iter(o))] == {"cache": False}}
    for name, props in PLOTS.items():
        assert set(props["y"]) <= files, name  # each file it reads is a stage's out in git
        for key in ("title", "x_label", "y_label", "template"):
            assert props.get(key), (name, key)
        assert props["x_label"] != props["x"], name  # a name people read, not the column's
        assert re.search(r"\((dB|bits per pixel|bits per image|count|mean squared error)\)$", props["y_label"]), name
        assert "<DVC_METRIC_Y_LABEL>" in json.dumps(template(props["template"])), name
    assert set(PLOTS) == {"stage1_loss", "test_psnr", "prior_bits", "rate_distortion", "atom_usage"}
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in SPEC["stages"]["evaluate"]["outs"]}
    assert PICTURES == ["eval/pictures"] and set(PICTURES) <= outs  # evaluate's titled grids


def test_the_rate_distortion_template_colours_by_the_tables_codec_column(tmp_path):
    colour = template(PLOTS["rate_distortion"]["template"])["encoding"]["color"]["field"]
    assert colour == "codec" and colour in COLUMNS
    points = [{"codec": codec, "bpp": 1.0, "psnr": 30.0} for codec in ("ours (factorised)", "ours (prior)", "JPEG", "WEBP")]
    with open(write_table(points, tmp_path / "rd.csv")) as handle:
        assert [row[colour] for row in csv.DictReader(handle)] == [p["codec"] for p in points]
    assert series("rate_distortion") >= {"JPEG", "WEBP"} and len(series("rate_distortion")) == 4  # the committed table


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
def workspace(tmp_path_factory) -> Path:
    """A workspace holding the repo's committed plot files and plot templates."""
    root = make_workspace(tmp_path_factory.mktemp("plots") / "ws")
    shutil.copytree(TEMPLATES, root / ".dvc/plots", dirs_exist_ok=True)
    for props in PLOTS.values():
        for path in props["y"]:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, root / path)
    for folder in PICTURES:  # grids as evaluate leaves them (a DVC out, so not in git)
        (root / folder).mkdir(parents=True)
        for name, colour in GRIDS.items():
            Image.new("RGB", (24, 16), colour).save(root / folder / name)
    return root


GRIDS = {"reconstructions.png": (200, 30, 30), "samples.png": (30, 30, 200)}


@pytest.fixture(scope="module")
def page(workspace) -> Path:
    """`dvc plots show` with the offline template."""
    template = write_template(workspace / "template.html")
    dvc("plots", "show", "--html-template", str(template), "-o", "out", cwd=workspace)
    return workspace / "out/index.html"


@pytest.mark.slow  # DVC
def test_dvc_draws_the_top_level_plots_titled_with_named_axes(workspace):
    shown = json.loads(dvc("plots", "show", "--json", cwd=workspace).stdout)["data"]
    pictures = {f"{folder}/{name}" for folder in PICTURES for name in GRIDS}
    assert set(shown) == set(PLOTS) | pictures
    for picture in pictures:
        assert [entry["type"] for entry in shown.pop(picture)] == ["image"], picture
    for name, (rendered,) in shown.items():
        spec = rendered["content"]
        assert spec["title"]["text"] == PLOTS[name]["title"]
        assert spec["encoding"]["x"]["title"] == PLOTS[name]["x_label"]
        assert spec["encoding"]["y"]["title"] == PLOTS[name]["y_label"]
        colour = spec["encoding"]["color"]["field"]
        assert {point[colour] for point in spec["data"]["values"]} == series(name), name


@pytest.mark.slow  # DVC
def test_the_page_loads_no_remote_script(page):
    html = page.read_text()
    parser = Scripts()
    parser.feed(html)
    assert all("src" not in attrs for attrs, _ in parser.found), [a for a, _ in parser.found if "src" in a]
    assert not re.search(r"<(?:script|link|img|iframe)[^>]+(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html)
    libraries = parser.found[0][1]
    assert "window.vegaEmbed=" in libraries and len(libraries) > 500_000  # the three libraries, inline
    assert embedded(page) == len(PLOTS)  # a div per plot of dvc.yaml's top-level section, no other
    shown = re.findall(r'<img src="(static/[^"]+)"', html)  # the grids, copied beside the page
    assert len(shown) == len(GRIDS) * len(PICTURES)
    for source in shown:
        assert Image.open(page.parent / source).getpixel((0, 0)) in GRIDS.values(), source


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


def drawn(page: Path, profile: Path) -> list[str]:
    """The page as headless Chromium leaves it after its scripts ran, with every host name unresolvable (only
    inline scripts can draw): the <svg class="marks"> Vega-Embed drew, one a plot."""
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
                           "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=300, env={"HOME": str(profile), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return re.findall(r"<svg[^>]*class=\"marks\".*?</svg>", done.stdout, re.S)


@pytest.mark.slow  # DVC and a browser
@pytest.mark.skipif(chromium() is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_headless_chromium_draws_every_plot_offline_with_its_titles_and_every_series(page, workspace, tmp_path):
    """Each plot an SVG (the template asks Vega-Embed for SVG: its text is in the page) holding the plot's title,
    both axis titles, and a line with points in it for each series (a y column, or a codec)."""
    svgs = drawn(page, tmp_path)
    assert len(svgs) == embedded(page) == len(PLOTS)
    for svg, (name, props) in zip(svgs, PLOTS.items()):  # the page keeps dvc.yaml's order
        labels = {unescape(label) for label in re.findall(r'aria-label="([^"]*)"', svg)}
        assert f"Title text '{props['title']}'" in labels, (name, sorted(labels)[:20])
        for axis in ("X", "Y"):
            assert any(label.startswith(f"{axis}-axis titled '{props[axis.lower() + '_label']}'") for label in labels), (name, axis)
        legend = next(label for label in labels if re.match(r"Symbol legend titled '(series|codec)'", label))
        assert set(legend.split(" values: ")[1].split(", ")) == series(name, workspace), (name, legend)
        lines = re.findall(r'<path [^>]*aria-roledescription="line mark"[^>]*\sd="M[-\d.]+,[-\d.]+[^"]*"', svg)
        assert len(lines) == len(series(name, workspace)), (name, len(lines))
