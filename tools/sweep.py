"""Gather every DVC experiment into one table and one plot: distilled-student accuracy against T.

After a sweep such as `dvc exp run --queue -S T=1,2,4,8,20 -S seed=0,1,2` and
`dvc queue start -j 2`, run from the repository root:

    python -m tools.sweep [--out sweep/]

Reads `dvc exp show --json`: params.yaml's dataset, T, alpha and seed and metrics/{teacher,student,
distilled}.json. Writes <out>/sweep.md (mean ± std over seeds per dataset, setting, alpha and T,
then one line per experiment) and <out>/accuracy_vs_T.png (a panel per dataset and setting, with
that setting's own teacher and student), and prints the table. Queued, running and failed
experiments are skipped with a note on stderr; the workspace is left out when it repeats an
experiment, or when `dvc status` says its metrics are out of date with its params or code.
Exit status 1, with a one-line message, when DVC fails or no experiment has metrics yet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

from kd import io, sweep

PLOT = "accuracy_vs_T.png"


def dvc(repo: Path, *args: str) -> str:
    """Run `dvc <args>` in `repo` with this interpreter's DVC; its stdout, or SystemExit(1)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                              capture_output=True, text=True)
    except OSError as e:
        fail(f"dvc {' '.join(args)}: {e}")
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip()] or ["no message"]
        fail(f"dvc {' '.join(args)} failed in {repo}: {last[-1].strip()}")
    return proc.stdout


def fail(message: str) -> NoReturn:
    """Print `error: message` as one line on stderr and exit with status 1."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def load_json(text: str, what: str) -> Any:
    """Parse the JSON that command `what` printed, or fail naming it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"{what} printed no JSON ({e})")


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.partition("\n")
    ap = argparse.ArgumentParser(prog="python -m tools.sweep", description=summary, epilog=details,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("sweep"),
                    help="folder for sweep.md and accuracy_vs_T.png (default: sweep)")
    ap.add_argument("--repo", type=Path, default=Path("."),
                    help="the DVC repository to read (default: the current directory)")
    ap.add_argument("--all-commits", action="store_true",
                    help="also gather experiments based on older commits, not only HEAD's "
                         "(they may have run other code)")
    args = ap.parse_args(argv)

    shown = dvc(args.repo, "exp", "show", "--json", *(["--all-commits"] if args.all_commits else []))
    # `dvc status --json` prints {} when every stage's outputs match its params, code and data.
    current = load_json(dvc(args.repo, "status", "--json"), "dvc status --json") == {}
    rows, notes = sweep.parse(load_json(shown, "dvc exp show --json"), include_workspace=current)
    if not current:
        notes.append("skipped workspace: not reproduced since its params or code changed (dvc status)")
    for note in notes:
        print(note, file=sys.stderr)
    if not rows:
        fail("no experiment has metrics yet: run `dvc repro`, or queue a sweep "
             "(`dvc exp run --queue -S T=1,2,4,8`) and `dvc queue start`")

    md = sweep.markdown(rows, PLOT)
    io.write_text(args.out / "sweep.md", md)
    sweep.accuracy_vs_T_plot(rows, args.out / PLOT)
    print(md)
    print(f"wrote {args.out / 'sweep.md'} and {args.out / PLOT}", file=sys.stderr)


if __name__ == "__main__":
    main()
