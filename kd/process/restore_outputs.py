"""A stage that fails or is stopped under DVC leaves its previous outputs, metrics included.

DVC deletes a stage's outputs before it runs the command. When the command then fails, the files
dvc.lock still names are gone from the workspace; `dvc checkout` brings back the cached ones but
not the `cache: false` metrics and report files, so `dvc status` would ask for a retrain. Every
one of those files is in DVC's cache all the same: DVC's run cache commits a stage's uncached
outputs there too (dvc/stage/cache.py). So on its way out a failed stage copies back, from the
cache, each output that dvc.lock records for it and that is missing.

The alternatives, and why not (docs/architecture.md has the measurements): `persist: true`
outputs are never deleted, but DVC keeps no run-cache entry for a stage with one, so queued
experiments that share a teacher would each retrain it; `cache: true` metrics would leave git,
so a clone would hold no metrics until `dvc pull`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from kd.process import files


def restore_outputs(stage: str | None = None, root: Path = Path(".")) -> list[str]:
    """Copy back from DVC's cache the outputs of `stage` (default: $DVC_STAGE, which DVC sets)
    that dvc.lock in `root` records and the workspace lacks; the paths restored. Does nothing
    outside DVC, and never raises: the stage's own error is the one to report."""
    stage = stage or os.environ.get("DVC_STAGE")
    if not stage:
        return []
    try:
        return _restore(stage, root)
    except Exception:  # noqa: BLE001 - a best effort on the way out of a failure
        return []


def _restore(stage: str, root: Path) -> list[str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outs = (lock or {}).get("stages", {}).get(stage, {}).get("outs", [])
    missing = [o for o in outs if o.get("md5") and not (root / o["path"]).exists()]
    if not missing:
        return []
    from dvc.repo import Repo  # only here: a second to import, on the failure path only

    with Repo(str(root)) as repo:
        cache = repo.cache.local
        restored = []
        for out in missing:
            if _copy_back(cache, out["md5"], root / out["path"]):
                restored.append(out["path"])
        return restored


def _copy_back(cache, md5: str, dest: Path) -> bool:
    obj = Path(cache.oid_to_path(md5))
    if not obj.is_file():
        return False
    if not md5.endswith(".dir"):
        with files.atomic_path(dest) as tmp:
            shutil.copyfile(obj, tmp)
        return True
    entries = json.loads(obj.read_text())  # a folder: DVC's manifest of relpath and md5
    if not all(Path(cache.oid_to_path(e["md5"])).is_file() for e in entries):
        return False
    with files.atomic_dir(dest) as tmp:
        for e in entries:
            target = Path(tmp) / e["relpath"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cache.oid_to_path(e["md5"]), target)
    return True
