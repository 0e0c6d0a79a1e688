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

from kd import training
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
    columns = training.HISTORY
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
