"""A pipeline run keeps the params it started with: a params file that changes under it stops it
before anything is registered.

Two `dvc exp run` started together in one workspace: the second writes its `-S` values into
params.yaml, then fails to take DVC's lock; without this, the first one's later stages would read
them and register a student trained with the second's T. So the check stage records the file's
sha256 beside the `dvc` process that runs it (in .dvc/tmp, which git ignores); every later
stage run by that same `dvc` process refuses a params file with another sha256, and every stage
compares again just before it registers a model (a change while it trained).
"""

from __future__ import annotations

import json
from pathlib import Path

from kd.errors import PipelineError
from kd.process import files, interrupt

RECORD = Path(".dvc/tmp/kd-params.json")  # relative to the stage's working directory
_loaded: dict[str, str] = {}  # the params file this process read, and its sha256


class ParamsChanged(PipelineError):
    """The params file is not the one this pipeline run started with."""


def record(path: str | Path) -> None:
    """The check stage: this `dvc` process's pipeline runs with this file's present bytes."""
    dvc = interrupt.dvc_process()
    if dvc is not None and RECORD.parent.is_dir():
        files.write_text(RECORD, json.dumps({"dvc": dvc, "sha256": files.file_sha256(path)}) + "\n")


def loaded(path: str | Path) -> None:
    """A stage read `path`: refuse it if the check stage of this same `dvc` process recorded
    other bytes, and remember them for `unchanged()`."""
    sha = files.file_sha256(path)
    _loaded.update(path=str(path), sha256=sha)
    dvc = interrupt.dvc_process()
    try:
        started = json.loads(RECORD.read_text()) if dvc is not None else None
    except (OSError, ValueError):
        started = None
    if started and started.get("dvc") == dvc and started.get("sha256") != sha:
        raise ParamsChanged(f"{path}: changed since this pipeline's check stage read it "
                            f"(another `dvc exp run` in this workspace?); nothing was registered: "
                            f"run it again when the other has finished")


def unchanged() -> None:
    """Before registering: the file still holds the bytes this stage read."""
    if _loaded and files.file_sha256(_loaded["path"]) != _loaded["sha256"]:
        raise ParamsChanged(f"{_loaded['path']}: changed while this stage ran (another "
                            f"`dvc exp run` in this workspace?); nothing was registered: run it "
                            f"again when the other has finished")


def between_epochs() -> None:
    """Between epochs of a stage DVC runs: a params file rewritten by a second `dvc exp run`
    stops it now, not after its last epoch (what it trains could not be registered). By hand
    a user may edit the file for their next run: such a stage is refused only when it would
    register (unchanged())."""
    if interrupt.dvc_process() is not None:
        unchanged()

