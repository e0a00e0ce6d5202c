"""An HTML template for `dvc plots show` that renders offline: DVC's own page loads Vega, Vega-Lite and
Vega-Embed from a CDN (a blank page without the internet); this one inlines them, bundled by the installed
``vl-convert-python``, and draws the plots as SVG. `make install` writes it to the path ``plots.html_template`` in .dvc/config names.

    python -m tasks.offline_plots PATH
"""

from __future__ import annotations

import sys
from pathlib import Path

from sparse_vqvae.atomic import atomic_write

VEGA_LITE = "5.21"  # DVC's plot templates are Vega-Lite v5 specs

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <script type="text/javascript">
    (function () {{  // Vega {vega}, Vega-Lite {vega_lite}, Vega-Embed {vega_embed}: window.vegaEmbed for DVC's plot divs
{bundle}
    }})();
    (function () {{  // SVG, not canvas: titles, axes and legends are text in the page (searchable, and a test reads them)
        var embed = window.vegaEmbed;
        window.vegaEmbed = Object.assign(function (element, spec, options) {{
            return embed(element, spec, Object.assign({{renderer: "svg"}}, options));
        }}, embed);
    }})();
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template() -> str:
    """The page: DVC fills ``{plot_divs}`` (and ``{refresh_tag}``); it has no ``{scripts}``, where DVC would
    put its CDN <script src> tags."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    for placeholder in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if placeholder in bundle.lower():  # would end the script early, or be filled in by DVC
            raise ValueError(f"the Vega bundle holds {placeholder!r}: it cannot be inlined as it is")
    return PAGE.format(bundle=bundle, vega=vl_convert.get_vega_version(), vega_lite=VEGA_LITE,
                       vega_embed=vl_convert.get_vega_embed_version(), refresh_tag="{refresh_tag}",
                       plot_divs="{plot_divs}")


def write_template(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        handle.write(template())
    return path


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tasks.offline_plots PATH")
    print(f"offline `dvc plots show` template: {write_template(sys.argv[1])}")


if __name__ == "__main__":
    main()
