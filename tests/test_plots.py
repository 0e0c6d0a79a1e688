"""`dvc plots show` / `dvc plots diff` write a page that renders offline and draws only the plots
dvc.yaml defines, the three models told apart by colour.

Runs DVC in a temporary git repository holding the project's plot configuration (dvc.yaml,
.dvc/config, the vega templates in .dvc/plots) and three small per-epoch CSVs with the real
columns. The page template is built from node_modules, which `npm ci` installs (run.sh does).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kd.train import steps
from tests.conftest import ROOT, tiny_params, write_params
from tools import plots_template

NODE_MODULES = ROOT / "node_modules"
MODELS = {"teacher": "teacher", "student": "student baseline", "distilled": "distilled student"}

pytestmark = pytest.mark.skipif(
    not all((NODE_MODULES / lib / "package.json").is_file() for lib in plots_template.LIBRARIES),
    reason="node_modules lacks vega, vega-lite or vega-embed: run `npm ci` (run.sh does it where "
           "npm exists); the offline page is built from them")


def dvc(repo: Path, *args: str) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   cwd=repo, check=True, capture_output=True)


def write_csv(repo: Path, name: str, shift: float = 0.0) -> None:
    """Four epochs under the header the stages really write."""
    columns = steps.HISTORY
    rows = [",".join(str(e) if c == "epoch" else f"{0.5 + 0.1 * e + shift:.3f}" for c in columns)
            for e in range(1, 5)]
    (repo / "plots" / f"{name}.csv").write_text("\n".join([",".join(columns), *rows]) + "\n")


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    (repo / "plots").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copy(ROOT / ".dvcignore", repo)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    write_params(repo, tiny_params())  # dvc.yaml interpolates ${dataset}
    for name in MODELS:
        write_csv(repo, name)
    # Where .dvc/config's plots.html_template points, built as run.sh builds it.
    plots_template.build(NODE_MODULES, repo / "build" / "plots_template.html")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "plots")
    return repo


def page_specs(repo: Path) -> tuple[str, list[dict]]:
    page = (repo / "dvc_plots" / "index.html").read_text()
    specs = re.findall(r"var spec = (\{.*?\});\s*vegaEmbed", page, flags=re.DOTALL)
    return page, [json.loads(s) for s in specs]


def title(spec: dict) -> str:
    return spec["title"]["text"] if isinstance(spec["title"], dict) else spec["title"]


def encoded(spec: dict, channel: str) -> dict:
    return spec.get("encoding", {}).get(channel, {})


def fields(node) -> set[str]:
    """Every data field a vega-lite spec encodes (its inline data left out)."""
    if isinstance(node, list):
        return set().union(*map(fields, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    own = {node["field"]} if isinstance(node.get("field"), str) else set()
    return own.union(*(fields(v) for k, v in node.items() if k != "data"))


def test_plot_data_are_cached_outs_not_stage_plots():
    """Stage-level `plots:` would add a plot per CSV column, so the CSVs are plain outs. They are
    cached: DVC saves no run-cache entry for a stage with an uncached out that is neither metric nor
    plot, and queued experiments over seeds and temperatures would then each retrain the teacher
    (test_pipeline_e2e checks that they do not)."""
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert not [name for name, stage in dvc_yaml["stages"].items() if "plots" in stage]
    outs = [entry for stage in dvc_yaml["stages"].values() for entry in stage.get("outs", [])]
    used = {path for p in dvc_yaml["plots"] for path in next(iter(p.values()))["y"]}
    assert used <= {entry for entry in outs if isinstance(entry, str)}  # no `cache: false`


def test_show_writes_a_self_contained_page_of_the_defined_plots_only(repo):
    dvc(repo, "plots", "show")
    page, specs = page_specs(repo)
    # Offline: no script from the network; the three libraries are in the page itself.
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?https?:", page, flags=re.IGNORECASE)
    for lib in plots_template.LIBRARIES:
        assert plots_template.library_script(NODE_MODULES, lib) in page, lib
    # Exactly the top-level plots of dvc.yaml: no automatic plot per CSV column (lr, timings).
    defined = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    titles = [next(iter(p.values()))["title"] for p in defined]
    assert sorted(map(title, specs)) == sorted(titles)
    assert not any("lr" in fields(s) or "epoch_seconds" in fields(s) for s in specs)
    # The models differ by colour and are named in the legend.
    for spec in specs:
        assert encoded(spec, "color")["field"] == "model"
        assert encoded(spec, "color")["scale"]["domain"] == list(MODELS.values())


def test_diff_keeps_model_colours_and_dashes_revisions(repo):
    write_csv(repo, "distilled", shift=0.05)
    dvc(repo, "plots", "diff", "HEAD")
    _, specs = page_specs(repo)
    accuracy = next(s for s in specs if title(s).startswith("Test accuracy"))
    assert {d["rev"] for d in accuracy["data"]["values"]} == {"HEAD", "workspace"}
    assert encoded(accuracy, "color").get("field") == "model"  # DVC's own templates: "rev"
    assert encoded(accuracy, "strokeDash").get("field") == "rev"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run vega")
def test_accuracy_plot_draws_three_models_in_three_colours(repo):
    """Renders the spec with the installed vega-lite + vega (as the browser would) to SVG."""
    dvc(repo, "plots", "show")
    _, specs = page_specs(repo)
    accuracy = next(s for s in specs if title(s).startswith("Test accuracy"))
    script = ("const vl = require('vega-lite'), vega = require('vega');"
              "const spec = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "new vega.View(vega.parse(vl.compile(spec).spec), {renderer: 'none'})"
              ".toSVG().then(svg => process.stdout.write(svg));")
    svg = subprocess.run(["node", "-e", script], input=json.dumps(accuracy), cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    # One line per model, each named and in its own colour.
    lines = re.findall(r'<path aria-label="[^"]*model: ([^;"]+)[^"]*"[^>]*'
                       r'aria-roledescription="line mark"[^>]*stroke="([^"]+)"', svg)
    assert sorted(model for model, _ in lines) == sorted(MODELS.values())
    assert len({stroke for _, stroke in lines}) == 3


# Revision names as hostile as git allows in a branch (no spaces): the page wrapper's own end tag,
# a comment opener that leaves the HTML parser inside a script, markup, quotes, an entity, a backtick.
HOSTILE_REVS = ["</plaintext><marquee>x", "<!--<script>", "</script><h1>INJ", "&amp;\"'", "a`<h1>b"]
# In a vega spec's data anything goes (a CSV cell, say): these also fake DVC's wrapper around a spec.
HOSTILE_DATA = [*HOSTILE_REVS, "\"}; vegaEmbed('#x', spec); </script></div>",
                '<div id = "y"> <script type = "text/javascript"> var spec = {"title": "fake"};',
                "\\\" ]]> --> </PLAINTEXT >"]


def hostile_page(tmp_path: Path) -> tuple[str, list[dict]]:
    """A page DVC's renderer writes with our template: two charts whose revisions are HOSTILE_DATA,
    a third after them; and the specs as DVC serialised them."""
    from dvc_render import VegaRenderer, render_html

    template = plots_template.build(NODE_MODULES, tmp_path / "template.html")
    renderers = [VegaRenderer([{"step": s, "loss": s * k, "rev": rev} for rev in revs
                               for s in range(3)], f"loss {k}.csv", x="step", y="loss", title=f"chart {k}")
                 for k, revs in ((1, HOSTILE_DATA), (2, HOSTILE_DATA[::-1]), (3, ["main"]))]
    specs = [json.loads(r.partial_html()) for r in renderers]
    out = render_html(renderers, tmp_path / "index.html", html_template=template)
    return Path(out).read_text(encoding="utf-8"), specs


def draw_in_node(page: str) -> tuple[list[dict], list[str]]:
    """Run the page's own drawing script in node, the HTML parser's part done by hand: the text of
    the page's final <plaintext> element is every character after its start tag (the standard's
    PLAINTEXT state). Returns the specs it hands vegaEmbed and the text of what else it adds."""
    head, tag, text = page.partition('<plaintext hidden id="dvc-plots">')
    assert tag, "the page has no <plaintext> element for DVC's output"
    script = head[head.rindex("<script>") + len("<script>"):head.rindex("</script>")]
    node = """
    const [script, text] = JSON.parse(require('fs').readFileSync(0, 'utf8'));
    const made = []; let ready;
    globalThis.document = {
      addEventListener: (event, f) => { if (event === 'DOMContentLoaded') ready = f; },
      getElementById: (id) => id === 'dvc-plots' ? {textContent: text, remove() {}} : null,
      createElement: (tag) => { const e = {tag, textContent: ''}; made.push(e); return e; },
      body: {appendChild: (e) => e},
    };
    globalThis.vegaEmbed = (div, spec) => { div.spec = spec; return Promise.resolve(); };
    (0, eval)(script);
    ready();
    process.stdout.write(JSON.stringify(made));"""
    made = json.loads(subprocess.run(["node", "-e", node], input=json.dumps([script, text]),
                                     capture_output=True, text=True, check=True, timeout=60).stdout)
    return [e["spec"] for e in made if "spec" in e], [e["textContent"] for e in made if e["textContent"]]


def test_nothing_dvc_writes_into_the_page_is_parsed_as_html(tmp_path):
    """DVC's output goes after the template's last tag, <plaintext>, whose text runs to the end of
    the file: no tag, comment, entity or end tag in it is recognised, whatever a name holds."""
    page, _ = hostile_page(tmp_path)
    before, after = (tmp_path / "template.html").read_text().split("{plot_divs}")
    tag = '<plaintext hidden id="dvc-plots">'
    assert before.endswith(tag) and "<plaintext" not in before[:-len(tag)].lower() and after == ""
    assert page.startswith(before)
    # DVC pasted the names unescaped for HTML (only JSON-escaped): the case at hand.
    assert all(json.dumps(name)[1:-1] in page for name in HOSTILE_DATA)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_every_chart_is_drawn_from_its_spec_whatever_the_names_hold(tmp_path):
    page, specs = hostile_page(tmp_path)
    drawn, other = draw_in_node(page)
    assert drawn == specs and other == []
    assert {d["rev"] for d in drawn[0]["data"]["values"]} == set(HOSTILE_DATA)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_diff_of_hostile_branch_names_draws_every_plot(repo):
    for i, name in enumerate(HOSTILE_REVS):
        write_csv(repo, "distilled", shift=0.01 * (i + 1))
        git(repo, "commit", "-qam", f"revision {i}")
        git(repo, "branch", name)
    dvc(repo, "plots", "diff", *HOSTILE_REVS)
    drawn, other = draw_in_node((repo / "dvc_plots" / "index.html").read_text())
    defined = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert sorted(map(title, drawn)) == sorted(next(iter(p.values()))["title"] for p in defined)
    for spec in drawn:
        assert {d["rev"] for d in spec["data"]["values"]} == set(HOSTILE_REVS)
    assert other == []


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (Debian's package)")
def test_a_browser_draws_every_chart_and_no_name_becomes_markup(tmp_path):
    """The page as a user opens it, in headless Chromium: three vega-embed charts, no <h1>,
    <marquee> or comment from the names in the document."""
    hostile_page(tmp_path)
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                           "--dump-dom", (tmp_path / "index.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    body = re.sub(r"<(script|style)\b.*?</\1>", "", proc.stdout, flags=re.DOTALL | re.IGNORECASE)
    assert body.count('class="vega-embed') == 3, proc.stderr[-2000:]
    assert not re.search(r"<(h1|marquee)\b|<!--|chart not drawn|Not drawn", body, flags=re.IGNORECASE)
