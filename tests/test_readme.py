"""The README and docs/ say only what the repository holds: every relative link resolves, and every
command they show names a real param, stage or module. Fast: no DVC, no training.

Checked in README.md and docs/*.md, in fenced code blocks and in inline code spans:
- `dvc exp run ... -S key=value` (also `--set-param`, and a bare `-S key=value` span): `key` is a
  param of the committed params.yaml, dotted keys through its nested mapping;
- `python -m <module>` and `torchrun ... -m <module>`: a module file of this repository;
- `dvc repro <stage>` (with or without `-s`) and `bash run.sh pipeline <stage>`: a stage of dvc.yaml.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import fields, is_dataclass
from pathlib import Path

import yaml

from kd.config.params import validate

ROOT = Path(__file__).resolve().parents[1]
MAX_README_LINES = 250

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")  # a span may wrap onto the next line
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|", "then"}


def committed_params() -> dict:
    """params.yaml as HEAD has it (a user's `dvc exp run -S` rewrites the working copy); the file
    itself outside a git checkout."""
    try:
        proc = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)
        text = proc.stdout if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        text = None
    return yaml.safe_load(text if text is not None else (ROOT / "params.yaml").read_text())


def dvc_stages() -> set[str]:
    return set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def has_param(params: dict, key: str) -> bool:
    node = params
    for part in key.lstrip("+~").split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def without_code(text: str) -> str:
    """The markdown with fenced blocks and inline code removed: links are read from the prose."""
    return INLINE.sub("", FENCE.sub("", text))


def broken_links(text: str, base: Path) -> list[str]:
    """Relative link targets in `text` (a markdown file in folder `base`) that name no file."""
    broken = []
    for target in LINK.findall(without_code(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto, ...: not ours to check; an anchor in the same page
        path = target.split("#", 1)[0]
        if not (base / path).exists():
            broken.append(target)
    return broken


def snippets(text: str) -> list[str]:
    """The shell command lines of a markdown text: each line of each fenced block that is not
    another language (continuation lines joined), and each inline code span."""
    lines = []
    for lang, body in FENCE.findall(text):
        if lang.strip() not in ("", "bash", "sh", "shell", "console"):
            continue
        lines += body.replace("\\\n", " ").splitlines()
    return lines + [" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text))]


def commands(line: str) -> list[list[str]]:
    """A command line as token lists, one per command (split at &&, ||, ;, |), comments dropped,
    each without its leading VAR=value assignments, `uv run` or `sudo`. Unparsable text: []."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return []
    cmds, cur = [], []
    for tok in tokens + [";"]:
        if tok in SEPARATORS:
            while cur and (ENV.match(cur[0]) or cur[0] == "sudo"):
                cur.pop(0)
            if cur[:2] == ["uv", "run"]:
                cur = cur[2:]
            if cur:
                cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    return cmds


def placeholder(tok: str) -> bool:
    return "<" in tok or "..." in tok


def set_params(cmd: list[str]) -> list[str]:
    """The values of -S / --set-param in a dvc exp run command (or a bare `-S k=v` span)."""
    values = []
    for i, tok in enumerate(cmd):
        if tok in ("-S", "--set-param") and i + 1 < len(cmd):
            values.append(cmd[i + 1])
        elif tok.startswith(("-S=", "--set-param=")):
            values.append(tok.split("=", 1)[1])
    return [v for v in values if not placeholder(v)]


def repro_targets(cmd: list[str]) -> list[str]:
    """The stages a `dvc repro` command names: its positional arguments (`-s` is a flag)."""
    return [t.split(":")[-1] for t in cmd if not t.startswith("-") and not placeholder(t)]


def modules(cmd: list[str]) -> list[str]:
    """The modules a `python -m` / `torchrun -m` command runs."""
    if not cmd or Path(cmd[0]).name not in ("python", "python3", "torchrun"):
        return []
    return [cmd[i + 1] for i, tok in enumerate(cmd[:-1]) if tok == "-m" and not placeholder(cmd[i + 1])]


def command_problems(text: str, params: dict, stages: set[str], root: Path = ROOT) -> list[str]:
    """Every command in `text` that names a param, stage or module that does not exist."""
    problems = []
    for line in snippets(text):
        for cmd in commands(line):
            if cmd[:3] == ["dvc", "exp", "run"] or cmd[0] in ("-S", "--set-param"):
                for value in set_params(cmd):
                    key = value.split("=", 1)[0]
                    if "=" not in value or not has_param(params, key):
                        problems.append(f"{' '.join(cmd)}: no param {key!r} in params.yaml")
            if cmd[:2] == ["dvc", "repro"]:
                targets = repro_targets(cmd[2:])
            elif cmd[:3] == ["bash", "run.sh", "pipeline"]:
                targets = repro_targets(cmd[3:])
            else:
                targets = []
            problems += [f"{' '.join(cmd)}: no stage {t!r} in dvc.yaml" for t in targets
                         if t not in stages]
            for module in modules(cmd):
                file = root / (module.replace(".", "/") + ".py")
                if not file.is_file():
                    problems.append(f"{' '.join(cmd)}: no module file {file.relative_to(root)}")
    return problems


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


def test_every_relative_link_resolves():
    assert len(pages()) > 1, "docs/ has no pages"
    broken = {p.relative_to(ROOT).as_posix(): broken_links(p.read_text(), p.parent) for p in pages()}
    assert not {k: v for k, v in broken.items() if v}


def test_every_command_names_a_real_param_stage_and_module():
    params, stages = committed_params(), dvc_stages()
    problems = {p.relative_to(ROOT).as_posix(): command_problems(p.read_text(), params, stages)
                for p in pages()}
    assert not {k: v for k, v in problems.items() if v}


def test_the_readme_names_every_param():
    # Every key kd.config.params takes (the params.yaml schema; a section's keys dotted), not a copy
    # here. The losses' own knobs are docs/extensions.md's, written from their registry.
    p = validate(committed_params())
    keys = [f.name for f in fields(p)] + [f"{section.name}.{f.name}" for section in fields(p)
                                          if is_dataclass(getattr(p, section.name))
                                          for f in fields(getattr(p, section.name)) if f.name != "knobs"]
    readme_code = " ".join(INLINE.findall(FENCE.sub("", (ROOT / "README.md").read_text())))
    missing = [k for k in keys
               if not re.search(rf"(?<!\w){re.escape(k.split('.')[-1])}(?!\w)", readme_code)]
    assert not missing, f"README.md's Parameters section does not name {missing}"


FAKE = """# A fake README

See [the docs](docs/nowhere.md), [a page that exists](README.md#quick-start),
[the web](https://example.org/x.md) and [this page](#top).

```bash
uv run dvc exp run -S T=4 -S distill.loss=dkd   # fine
uv run dvc exp run --queue -S Temp=8 -S 'distill.nosuch=[3]'
MLFLOW_TRACKING_URI=sqlite:///mlflow.db uv run python -m tools.nosuch --port 5001
uv run dvc repro -f -s nosuchstage && uv run dvc repro distill
```

```python
import nothing_checked_here   # python -m not.checked
```

Inline: `uv run python -m stages.teacher`, `-S seed=0,1,2`, `-S teacher.nosuch=1`,
`dvc repro -f -s <stage>`.
"""


def test_the_checks_report_what_is_wrong():
    """The checkers find a bad link, bad params, a bad module and a bad stage, and nothing else."""
    params = {"T": 2, "seed": 0, "distill": {"loss": "kd", "omit_classes": []}, "teacher": {"arch": "x"}}
    assert broken_links(FAKE, ROOT) == ["docs/nowhere.md"]
    problems = command_problems(FAKE, params, {"distill", "teacher"})
    assert [p.rsplit(": ", 1)[1] for p in problems] == [
        "no param 'Temp' in params.yaml",
        "no param 'distill.nosuch' in params.yaml",
        "no module file tools/nosuch.py",
        "no stage 'nosuchstage' in dvc.yaml",
        "no param 'teacher.nosuch' in params.yaml",
    ]
