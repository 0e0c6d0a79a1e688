"""Put back every pipeline output that dvc.lock records and the workspace lacks, from DVC's cache,
the `cache: false` metrics and report files included.

A stage that fails or is stopped does this for itself (kd/process/restore_outputs.py). A
stage killed with SIGKILL (`kill -9`, the kernel out of memory) cannot: DVC had deleted its
outputs before starting it, and `dvc checkout` brings back only the cached ones. This puts back
the rest, from the copies DVC's run cache keeps, each checked against its md5 first (a corrupt
cache object is named, never copied). Run: python -m tools.restore [--stage NAME]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from kd.process import restore_outputs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    ap.add_argument("--stage", action="append", help="only this stage's outputs (repeatable)")
    args = ap.parse_args(argv)
    lock = Path("dvc.lock")
    if not lock.is_file():
        raise SystemExit("error: dvc.lock: no such file (run from the repository root, after a "
                         "`dvc repro`)")
    stages = args.stage or list((yaml.safe_load(lock.read_text()) or {}).get("stages", {}))
    outcomes = [restore_outputs.restore_outputs(stage) for stage in stages]
    restored = [path for o in outcomes for path in o.restored]
    print("\n".join(f"restored {p}" for p in restored) or "nothing to restore")
    lost = {path: why for o in outcomes for path, why in o.lost.items()}
    if lost:  # each output was tried; what is still missing, and why, on one line
        print("error: not restored: " + ", ".join(f"{p} ({why})" for p, why in lost.items()),
              file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
