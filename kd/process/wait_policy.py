"""How a stage's idle compute threads wait: they sleep, so a busy machine's cores go to work.

torch's CPU threads (OpenMP) meet at the end of every op; by default a thread that arrives early
spins for a while before it sleeps. On an idle machine spinning saves a wake-up; on a busy one a
spinning thread burns the time slice a neighbour (another queued experiment, anyone's job) could
have used, and the stage that spins gets less than its fair share of the cores, not more
(`python -m benchmarks.contention` measures both). So every stage process asks OpenMP to let
waiting threads sleep (`OMP_WAIT_POLICY=PASSIVE`) before torch loads it; a value already in the
environment is the user's choice and wins. The policy changes no result, only speed, and each
stage's MLflow run records it (`omp_wait_policy`).
"""

from __future__ import annotations

import os
import sys

VARIABLE, POLICY = "OMP_WAIT_POLICY", "PASSIVE"


def prepare() -> None:
    """Before torch is imported: sleep while waiting, unless the environment says otherwise.
    Once torch is loaded its OpenMP has read the variable: then nothing is changed, so the
    environment (and what settings() records) stays what the runtime uses."""
    if "torch" not in sys.modules:
        os.environ.setdefault(VARIABLE, POLICY)


def settings() -> dict[str, str]:
    """For the stage's MLflow run: the policy its threads waited under."""
    return {"omp_wait_policy": os.environ.get(VARIABLE, "unset")}
