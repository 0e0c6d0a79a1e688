"""Where this project lives: the repository every stage of a pipeline shares.

`DVC_ROOT` when DVC runs the stage (DVC sets it to the parent repository even inside a queued
experiment's temporary copy, so side-by-side experiments find each other), else the folder that
holds this code; never the working directory. The tracking store (kd/track/store.py) and the core
slots (kd/process/cores.py) are kept there.
"""

from __future__ import annotations

import os
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[2]


def root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or CODE_ROOT).resolve()
