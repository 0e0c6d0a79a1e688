"""A stage that fails or is stopped under DVC leaves its previous outputs, metrics included.

DVC deletes a stage's outputs before it runs the command. When the command then fails, the files
dvc.lock still names are gone from the workspace; `dvc checkout` brings back the cached ones but
not the `cache: false` metrics and report files, so `dvc status` would ask for a retrain. Every
one of those files is in DVC's cache all the same: DVC's run cache commits a stage's uncached
outputs there too (dvc/stage/cache.py). So on its way out a failed stage copies back, from the
cache, each output that dvc.lock records for it and that is missing.

Each output is copied on its own: one that cannot be (a full disk under model/, a cache object
that is missing or no longer has the md5 it is named by) does not stop the others, and every one
left missing is in `Outcome.lost` with the reason, for the stage's one line to name
(`Outcome.note`). A cache object is checked against its md5 before it is copied, as `dvc
checkout` checks it: a corrupt copy is never put back.

The alternatives, and why not (docs/architecture.md has the measurements): `persist: true`
outputs are never deleted, but DVC keeps no run-cache entry for a stage with one, so queued
experiments that share a teacher would each retrain it; `cache: true` metrics would leave git,
so a clone would hold no metrics until `dvc pull`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kd.process import files
from kd.process.recorded_hashes import cache_folder, md5_file


@dataclass
class Outcome:
    """What a restore did: the outputs put back, and those left missing with the reason."""

    stage: str | None = None
    restored: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)

    def note(self) -> str:
        """'' when nothing is left missing, else what the stage's one line ends with: the files
        and why, and the command that puts them back once the cause is fixed."""
        if not self.lost:
            return ""
        named = ", ".join(f"{path} ({why})" for path, why in self.lost.items())
        again = f" --stage {self.stage}" if self.stage else ""
        return f"; not restored: {named}; then run `python -m tools.restore{again}`"


def restore_outputs(stage: str | None = None, root: Path = Path(".")) -> Outcome:
    """Copy back from DVC's cache the outputs of `stage` (default: $DVC_STAGE, which DVC sets)
    that dvc.lock in `root` records and the workspace lacks. Does nothing outside DVC, and never
    raises: the stage's own error is the one to report, with this Outcome's note."""
    stage = stage or os.environ.get("DVC_STAGE")
    outcome = Outcome(stage)
    if not stage or not (root / "dvc.lock").is_file():
        return outcome
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text())
        outs = (lock or {}).get("stages", {}).get(stage, {}).get("outs", [])
        missing = {o["path"]: o["md5"] for o in outs
                   if o.get("md5") and not (root / o["path"]).exists()}
    except Exception as e:  # noqa: BLE001 - an unreadable lock: say so, do not hide the failure
        outcome.lost["dvc.lock"] = f"unreadable: {_why(e)}"
        return outcome
    if not missing:
        return outcome
    try:
        with _cache(root) as cache:
            for path, md5 in missing.items():
                try:
                    _copy_back(cache, md5, root / path)
                    outcome.restored.append(path)
                except Exception as e:  # noqa: BLE001 - the next output is still worth trying
                    outcome.lost[path] = _why(e)
    except Exception as e:  # noqa: BLE001 - no DVC repository or cache to copy from
        outcome.lost.update({p: _why(e) for p in missing if p not in outcome.restored})
    return outcome


class _Objects:
    """DVC's local cache of md5 objects in a folder: what `repo.cache.local` answers here."""

    def __init__(self, folder: Path):
        self.folder = folder

    def oid_to_path(self, md5: str) -> str:
        return str(self.folder / md5[:2] / md5[2:])


@contextmanager
def _cache(root: Path) -> Iterator:
    """The project's cache of md5 objects. Read from DVC's config files when they set nothing
    but the cache's folder: no `import dvc` (most of a second, and more memory than a process
    stopped for lack of it may have); else from DVC itself."""
    folder = cache_folder(root)
    if folder is not None:
        yield _Objects(folder / "files" / "md5")
        return
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        yield repo.cache.local


def _why(e: BaseException) -> str:
    if isinstance(e, _NotRestorable):
        return str(e)
    if isinstance(e, files.WriteError):  # "<path>: cannot write it (<reason>)": the path is named
        return str(e).split(": ", 1)[-1]
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:200]


class _NotRestorable(Exception):
    """The cache has no good copy of an output."""


def _object(cache, md5: str) -> Path:
    """The cache object named `md5`, checked: present, and its bytes have that md5."""
    obj = Path(cache.oid_to_path(md5))
    if not obj.is_file():
        raise _NotRestorable("not in DVC's cache; `dvc pull` fetches it from a remote")
    if md5_file(obj) != md5.removesuffix(".dir"):
        raise _NotRestorable(f"DVC's cache copy {obj.name} is corrupt (its md5 differs); "
                             "rerun its stage")
    return obj


def _copy_back(cache, md5: str, dest: Path) -> None:
    obj = _object(cache, md5)
    if not md5.endswith(".dir"):
        with files.atomic_path(dest) as tmp:
            _copy(obj, tmp)
        return
    entries = json.loads(obj.read_text())  # a folder: DVC's manifest of relpath and md5
    sources = [(e["relpath"], _object(cache, e["md5"])) for e in entries]
    with files.atomic_dir(dest) as tmp:
        for rel, source in sources:
            target = Path(tmp) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy(source, target)


def _copy(source: Path, target: Path) -> None:
    """A write that fails is about the output, not the cache object it was read from (which an
    OSError from copyfile would name)."""
    try:
        shutil.copyfile(source, target)
    except OSError as e:
        raise _NotRestorable(f"cannot write it ({e.strerror or e})") from None
