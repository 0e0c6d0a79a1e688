"""Build the HTML page template that makes `dvc plots show` / `dvc plots diff` work offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so it is blank without a
network. This template inlines the three libraries, as `npm ci` installed them from
package-lock.json, and has no `{scripts}` placeholder, where DVC would put its CDN <script> tags.
.dvc/config names it (`plots.html_template`), so every page DVC writes is one self-contained file:
it renders from the file system, and still does when copied off the machine. (Relative <script
src> paths to node_modules would break as soon as the page is written with `-o`, from a
subfolder, or copied elsewhere.)

In:  node_modules/{vega,vega-lite,vega-embed} (`npm ci` at the repository root; run.sh does it).
Out: build/plots_template.html (git-ignored; run.sh rebuilds it).
Run: python -m tools.plots_template [--node-modules DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

# In load order: vega-lite needs the global `vega`, vega-embed both.
LIBRARIES = ("vega", "vega-lite", "vega-embed")
# Placeholders DVC fills with str.replace (dvc_render.html.HTML.embed); only {plot_divs} is ours.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>DVC plots</title>
{libraries}
<style>
  body {{ font-family: sans-serif; }}
  body > div {{ display: inline-block; vertical-align: top; margin: 0 1em 1.5em 0; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def library_script(node_modules: Path, name: str) -> str:
    """One <script> element holding the browser build the CDN would serve for `name`."""
    meta = json.loads((node_modules / name / "package.json").read_text())
    code = (node_modules / name / meta["jsdelivr"]).read_text(encoding="utf-8")
    for placeholder in PLACEHOLDERS:
        if placeholder in code:  # DVC would replace it inside the library's code
            raise SystemExit(f"{name} {meta['version']} contains {placeholder}; cannot inline it")
    # "</script" would end the element early; "<\/" means the same inside JS strings and regexes.
    code = re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE)
    return f"<script>/* {name} {meta['version']} */\n{code}\n</script>"


def build(node_modules: Path, out: Path) -> Path:
    missing = [n for n in LIBRARIES if not (node_modules / n / "package.json").is_file()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not in {node_modules}: run `npm ci` at the "
                         "repository root first")
    html = PAGE.format(libraries="\n".join(library_script(node_modules, n) for n in LIBRARIES))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node-modules", type=Path, default=Path("node_modules"),
                    help="where npm installed the libraries (default: node_modules)")
    ap.add_argument("--out", type=Path, default=Path("build/plots_template.html"),
                    help="template to write; .dvc/config points here (default: "
                         "build/plots_template.html)")
    args = ap.parse_args(argv)
    print(f"plots_template: wrote {build(args.node_modules, args.out)}")


if __name__ == "__main__":
    main()
