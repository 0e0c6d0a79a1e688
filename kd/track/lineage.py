"""Who made a run: the commit and DVC experiment it belongs to (the process that ran it:
kd/process/identity.py)."""

from __future__ import annotations

import functools
import os
import subprocess


@functools.cache  # HEAD does not move while a stage runs; asked for by every tag set
def _git_head() -> str | None:
    """The commit checked out in the working directory (a queued experiment's copy has its own)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def experiment_name() -> str:
    """The DVC experiment's name under `dvc exp run`; the commit (short) under `dvc repro`."""
    head = _git_head()
    return os.environ.get("DVC_EXP_NAME") or (head[:7] if head else "workspace")


def run_tags(stage: str, dataset: str, run_type: str = "stage") -> dict[str, str | None]:
    """The tags every run carries; None where DVC did not set one (stage_run leaves those out)."""
    return {"run_type": run_type, "experiment": experiment_name(), "dvc.stage": stage,
            "dataset": dataset, "dvc.exp_name": os.environ.get("DVC_EXP_NAME"),
            "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV") or _git_head()}
