"""A file is checked against the hash DVC recorded for it before a stage uses it.

dvc.lock records the md5 of every output a stage wrote (a folder's as the md5 of its manifest,
`<md5>.dir`). DVC compares those only to decide what to rerun: a model or a prepared split
changed on disk (a flipped byte, a bad copy) is read by the next stage as it is, and a corrupt
teacher quietly makes garbage soft targets. So the shared loaders (kd/process/files.py
`load_torch`, kd/data/splits.py `load`) call `verify` first: a file that dvc.lock records as some
stage's output must have that md5, or the stage stops with one line naming the file and the fix.

Only under DVC (which sets DVC_STAGE for every stage it runs): there the lock is current when the
next stage starts, since DVC writes each stage's entry as soon as that stage has run. A stage run
by hand (`python -m stages.soft_targets` after `python -m stages.teacher` with other params) reads
what it is given: the lock then describes an earlier run, and its "fix" would overwrite the new
model. A file no dvc.lock records (a test's temporary project, `--teacher other.pt`) has nothing
to be compared with and is read as it is.

Only DVC 3's plain md5 (`hash: md5` in the entry) is compared: DVC 2's md5 of text files is of
their content with CRLF turned into LF, which this module does not recompute.
"""

from __future__ import annotations

import hashlib
import json
import os
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


def cache_folder(root: Path) -> Path | None:
    """`cache.dir` as DVC resolves it (the project's config.local over its config over the user's
    and the system's; a relative dir is relative to the file that sets it), default .dvc/cache;
    None when a [cache] section says more than `dir` (a remote as cache, say: DVC decides)."""
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    found = root / ".dvc" / "cache"
    for config in (Path("/etc/xdg/dvc/config"), home / "dvc" / "config",
                   root / ".dvc" / "config", root / ".dvc" / "config.local"):
        try:
            text = config.read_text()
        except OSError:
            continue
        section, keys = "", {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("["):
                section = line.strip("[]'\" ").lower()
            elif section == "cache" and "=" in line:
                key, _, value = line.partition("=")
                keys[key.strip()] = value.strip()
        if set(keys) - {"dir", "type", "shared", "protected"}:
            return None
        if "dir" in keys:
            found = (config.parent / keys["dir"]).resolve()
    return found


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
    dvc.lock records for it; nothing when it matches, nothing is recorded, or DVC is not running
    this stage."""
    if not os.environ.get("DVC_STAGE"):
        return
    found = recorded(path)
    if found is None or not Path(path).exists():
        return
    want, stage, _ = found
    path = Path(path)
    entries = manifest(path) if path.is_dir() else None
    got = manifest_md5(entries) if entries is not None else md5_file(path)
    if got != want:
        which = _first_difference(path, entries, want) if entries is not None else None
        named = f"{which}: its content does not match the md5 dvc.lock records for {path}" \
            if which else f"{path}: its content does not match the md5 dvc.lock records for it"
        raise Mismatch(f"{named} (corrupt, or changed outside DVC); put it back with `dvc "
                       f"checkout -f {path}` or rerun its stage with `dvc repro -f -s {stage}`")


def _first_difference(folder: Path, entries: list[dict], want: str) -> Path | None:
    """The first file of `folder` whose md5 is not the one DVC's cached manifest lists for it
    (a file added or missing counts); None without the manifest in the cache."""
    lock = _lock_of(folder.absolute())
    cache = cache_folder(lock.parent) if lock is not None else None
    if cache is None:
        return None
    try:
        listed = json.loads((cache / "files" / "md5" / want[:2] / want[2:]).read_text())
        recorded_entries = {e["relpath"]: e["md5"] for e in listed}
    except (OSError, ValueError, KeyError, TypeError):  # not in the cache, or not a manifest
        return None
    present = {e["relpath"]: e["md5"] for e in entries}
    for rel in sorted(present.keys() | recorded_entries.keys()):
        if present.get(rel) != recorded_entries.get(rel):
            return folder / rel
    return None
