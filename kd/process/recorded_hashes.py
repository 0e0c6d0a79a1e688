"""A file is checked against the hash DVC recorded for it before a stage uses it.

dvc.lock records the md5 of every output a stage wrote (a folder's as the md5 of its manifest,
`<md5>.dir`). DVC compares those only to decide what to rerun: a model or a prepared split
changed on disk (a flipped byte, a bad copy) is read by the next stage as it is, and a corrupt
teacher quietly makes garbage soft targets. So the shared loaders (kd/process/files.py
`load_torch`, kd/data/splits.py `load`) call `verify` first: a file that dvc.lock records as some
stage's output must have that md5, or the stage stops with one line naming the file and the fix.

A file no dvc.lock records (a test's temporary project, `--teacher other.pt`) has nothing to be
compared with and is read as it is. Under `dvc repro` the lock is current when the next stage
starts: DVC writes each stage's entry as soon as that stage has run.

Only DVC 3's plain md5 (`hash: md5` in the entry) is compared: DVC 2's md5 of text files is of
their content with CRLF turned into LF, which this module does not recompute.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from kd.errors import PipelineError


class Mismatch(PipelineError):
    """A file's content is not what dvc.lock records for it: corrupt, or changed outside DVC."""


def md5_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def manifest(folder: Path) -> list[dict]:
    """A folder's entries as DVC lists them in its `.dir` object: every file under it, sorted by
    relative path as a string (`a-b/y` before `a/z`), each with its md5."""
    found = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    return [{"md5": md5_file(p), "relpath": rel} for rel, p in found]


def manifest_md5(entries: list[dict]) -> str:
    """The name DVC 3 gives a folder: the md5 of its manifest as JSON with sorted keys."""
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def _lock_of(path: Path) -> Path | None:
    """The dvc.lock of the DVC project `path` lies in: the nearest one above it, not beyond the
    project's root (the folder holding .dvc or .git)."""
    for folder in path.parents:
        if (folder / "dvc.lock").is_file():
            return folder / "dvc.lock"
        if (folder / ".dvc").is_dir() or (folder / ".git").exists():
            return None
    return None


def recorded(path: str | Path) -> tuple[str, str, str] | None:
    """(md5 dvc.lock records for `path`, the stage that wrote it, its path as dvc.lock names it),
    or None when no dvc.lock records it as an output."""
    path = Path(path).absolute()
    lock = _lock_of(path)
    if lock is None:
        return None
    try:
        rel = path.relative_to(lock.parent).as_posix()
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except (OSError, ValueError, yaml.YAMLError):
        return None  # an unreadable lock: DVC itself refuses to run, and says why
    for name, stage in stages.items():
        for out in (stage or {}).get("outs") or []:
            if out.get("path") == rel and out.get("hash") == "md5" and out.get("md5"):
                return out["md5"], name, rel
    return None


def verify(path: str | Path) -> None:
    """Raise Mismatch, one line, when `path` (a file or a folder output) differs from what
    dvc.lock records for it; nothing when it matches or nothing is recorded."""
    found = recorded(path)
    if found is None or not Path(path).exists():
        return
    want, stage, _ = found
    path = Path(path)
    got = manifest_md5(manifest(path)) if path.is_dir() else md5_file(path)
    if got != want:
        raise Mismatch(f"{path}: its content does not match the md5 dvc.lock records for it "
                       f"(corrupt, or changed outside DVC); put it back with `dvc checkout -f "
                       f"{path}` or rerun its stage with `dvc repro -f -s {stage}`")
