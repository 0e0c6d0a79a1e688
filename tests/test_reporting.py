"""Markdown shows user-named values as literal text: experiment names in tools.sweep's tables
(results/*.md), the architecture and preset in report.md.

Renders report_markdown's output with markdown-it (CommonMark, with GFM tables), as a reader's
viewer would, and reads the HTML back: no tag comes from a name, and each name reads as typed.
"""

from html.parser import HTMLParser

import pytest

from kd.config import params
from kd.report import tables
from tests.conftest import tiny_params

markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py renders the report")

HOSTILE = ["a`<h1>INJ<marquee>", "``</code><script>alert(1)</script>", "<!--", "x\n\n<h1>y",
           "&amp; & <b>bold</b>", "`", " spaced ", "*em* _u_ [link](http://x) <http://x>", "a|b"]


class Html(HTMLParser):
    """The start tags of an HTML fragment, and the text of each <code> element."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.code: list[str] = []
        self._in_code = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "code":
            self._in_code = True
            self.code.append("")

    def handle_endtag(self, tag):
        if tag == "code":
            self._in_code = False

    def handle_data(self, data):
        if self._in_code:
            self.code[-1] += data

    def handle_comment(self, data):
        self.tags.append("<!--")


def render(md: str) -> Html:
    return Html(markdown_it.MarkdownIt("commonmark").enable("table").render(md))


def report(arch: str = "mlp:32") -> str:
    p = params.validate(tiny_params())
    rows = [{"name": name, "arch": arch, "params": 1000, "test_acc": 0.9, "test_errors": 10,
             "agreement": None if name == "teacher" else 0.95, "test_ece": 0.01, "best_epoch": 2,
             "flops_per_image": 2e6, "size_bytes": 4096}
            for name in ("teacher", "student baseline", "distilled student")]
    finals = {n: {"val_acc": 0.91, "test_acc": 0.9, "test_errors": 10}
              for n in ("teacher", "student", "distilled")}
    head = tables.headline(finals, 0.95, 0.95)
    return tables.report_markdown(p, "kd (T 4, alpha 0.9)", rows, head, finals["distilled"],
                                  ["zero", "one"], {r["name"]: [1, 2] for r in rows})


def experiments(name: str) -> str:
    """A results table as tools.sweep writes one: an experiment's name in its first cell."""
    return tables.markdown_table(["experiment", "test acc"], [[tables.code_span(name), "90.00%"]])


def test_ordinary_values_come_out_unchanged():
    md = report()
    assert "Preset `none`." in md and "| teacher | `mlp:32` | 1,000 |" in md
    assert "| `jumpy-bats` | 90.00% |" in experiments("jumpy-bats")


def test_the_report_renders_only_its_own_markup():
    """The baseline for the tests below: what an ordinary report holds."""
    html = render(report())
    assert html.tags.count("h1") == 1 and "<!--" not in html.tags
    assert html.code[:2] == ["none", "mlp:32"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_experiment_name_renders_as_its_own_text(name):
    html, plain = render(experiments(name)), render(experiments("jumpy-bats"))
    assert html.tags == plain.tags  # no tag or comment opened by the name, none closed early
    assert html.code == [" ".join(name.splitlines())]  # read as typed (a line break: a space)


@pytest.mark.parametrize("arch", ["mlp:32|<h1>x", "a`b</td>"])
def test_hostile_architecture_stays_in_its_table_cell(arch):
    """The architecture comes from the checkpoint file; a `|` would split its cell even inside a
    code span."""
    html, plain = render(report(arch)), render(report())
    assert html.tags == plain.tags
    assert html.code[1:4] == [arch] * 3  # the comparison table's three architecture cells


def test_the_pipeline_run_leads_with_the_distilled_students_validation_accuracy():
    """MLflow's compare view opens its parallel-coordinates chart on the run's first metric: the
    validation accuracy settings are chosen on, not a teacher's score every run of a seed shares."""
    finals = {n: {"val_acc": v, "test_acc": v - 0.01, "test_errors": e}
              for n, v, e in (("teacher", 0.93, 700), ("student", 0.90, 1000), ("distilled", 0.91, 900))}
    head = tables.headline(finals, 0.92, 0.94)
    assert next(iter(head)) == "distilled_val_acc" and head["distilled_val_acc"] == 0.91
    assert {n: head[f"{n}_val_acc"] for n in finals} == {"teacher": 0.93, "student": 0.90, "distilled": 0.91}
    assert head["gain"] == pytest.approx(0.01) and head["distilled_test_errors"] == 900


def test_a_class_named_by_its_index_is_not_shown_twice():
    table = tables.per_class_table(["teacher"], ["0", "Trouser"], {"teacher": [4, 2]})
    assert "| 0 | 4 |" in table and "| 1 Trouser | 2 |" in table
