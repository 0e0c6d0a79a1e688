"""Build the HTML page template that makes `dvc plots show` / `dvc plots diff` work offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so it is blank without a
network. This template inlines the three libraries, as `npm ci` installed them from
package-lock.json, and has no `{scripts}` placeholder, where DVC would put its CDN <script> tags.
.dvc/config names it (`plots.html_template`), so every page DVC writes is one self-contained file:
it renders from the file system, and still does when copied off the machine. (Relative <script
src> paths to node_modules would break as soon as the page is written with `-o`, from a
subfolder, or copied elsewhere.)

DVC pastes each chart into the page as HTML with the revision names (experiment and branch names,
anybody's input) unescaped in it, so the page does not let the HTML parser read that part: it is
the text of a final <plaintext> element, and a small script (DRAW) draws the charts from it.

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

# DVC pastes each chart as (dvc_render.vega.VegaRenderer.DIV)
#   <div id = "ID"> <script type = "text/javascript"> var spec = JSON; vegaEmbed('#ID', spec);
#   </script> </div>
# with every revision name unescaped inside JSON strings (json.dumps leaves < > & / ! - as they
# are). Read as HTML, a name holding "<!--<script>" leaves the parser inside that script, and every
# chart after it blank; "</script><h1>" makes markup. No wrapper with an end tag can hold that safely:
# <textarea>, <xmp>, <noscript>, <script type="text/plain"> and comments all end at a string a name
# may hold, and <textarea> decodes entities too. So {plot_divs} is the content of a <plaintext>
# element, the page's last: after its start tag the HTML parser reads every character to the end of
# the file as text (the standard's PLAINTEXT tokenizer state has no way out: no end tag, comment,
# entity or tag is recognised), so whatever a name holds stays text. DRAW reads that text, splits it
# along DVC's fixed wrapper, finds where each spec ends by scanning JSON (a string ends only at an
# unescaped quote, so nothing in a name ends a spec early), and draws each chart from JSON.parse in
# a fresh <div>. The text is never handed to the HTML parser again. Output that is not one of those
# charts (DVC's image plots paste names as HTML too) is left out, with a note.
DRAW = r"""
function jsonEnd(text, i) {  // index just after the JSON object or array that starts at text[i]
  let depth = 0, inString = false;
  for (; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;  // skip the escaped character, \" included
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{" || c === "[") depth++;
    else if ((c === "}" || c === "]") && --depth === 0) return i + 1;
  }
  return -1;
}

function dvcSpecs(text) {  // {specs: [each chart's JSON text], rest: what is not such a chart}
  // IDs are plot names with < > { } ; = and spaces made "_" (dvc_render Renderer.remove_special_chars)
  const open = /\s*<div id = "[^>]*">\s*<script type = "text\/javascript">\s*var spec = /y;
  const close = /;\s*vegaEmbed\('#[^>]*', spec\);\s*<\/script>\s*<\/div>/y;
  const specs = [];
  let pos = 0;
  for (;;) {
    open.lastIndex = pos;
    if (!open.test(text) || text[open.lastIndex] !== "{") break;
    const start = open.lastIndex, end = jsonEnd(text, start);
    close.lastIndex = end;
    if (end < 0 || !close.test(text)) break;
    specs.push(text.slice(start, end));
    pos = close.lastIndex;
  }
  return {specs, rest: text.slice(pos).trim()};
}

document.addEventListener("DOMContentLoaded", () => {
  const source = document.getElementById("dvc-plots");
  const {specs, rest} = dvcSpecs(source.textContent);
  source.remove();
  const add = (tag) => document.body.appendChild(document.createElement(tag));
  for (const json of specs) {
    const div = add("div");
    const failed = (e) => { div.textContent = `chart not drawn: ${e}`; };
    try { vegaEmbed(div, JSON.parse(json)).catch(failed); } catch (e) { failed(e); }
  }
  if (rest) add("p").textContent = `Not drawn: ${rest.length} characters of DVC output that are `
    + "not a vega chart (image plots?); see `dvc plots show --json`.";
});
"""

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
<script>{draw}</script>
<plaintext hidden id="dvc-plots">{{plot_divs}}"""
# Nothing may follow {plot_divs}: it would be text of the <plaintext> too. </body> and </html> are
# optional in HTML.


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
    html = PAGE.format(libraries="\n".join(library_script(node_modules, n) for n in LIBRARIES),
                       draw=DRAW)
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
