"""Atomic output writing and safe reading: a stage that fails or is killed leaves no half-written
file behind, and a stage's outputs change together or not at all.

Each writer puts the bytes in a temporary sibling and renames it over the target (`os.replace`
is atomic on POSIX within one filesystem), so readers see the old file or the new, never a mix.
`write_files` does this for a whole set: every temporary is written first, and only then are all
renamed, so a failure while writing any of them (a full disk, a file where a folder should be)
leaves every target as it was. A temporary's name carries its writer's PID, so one left by a
killed process is removed by the next write beside it. A failed write is a `WriteError` naming
the target, never the temporary.
"""

from __future__ import annotations

import errno
import hashlib
import io as _io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from kd.errors import PipelineError
from kd.process.identity import pid_alive
from kd.process.recorded_hashes import verify


class UnreadableFile(PipelineError):
    """An input file is missing, truncated, corrupt or not the kind of file the stage needs."""


class WriteError(PipelineError):
    """An output could not be written (a full disk, no permission, a file where a folder goes)."""


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Report an OSError while writing `path` as a WriteError about `path` (not a temporary)."""
    try:
        yield
    except OSError as e:
        raise WriteError(f"{path}: cannot write it ({e.strerror or e}"
                         f"{'' if e.filename in (None, str(path)) else f': {e.filename}'})"
                         ) from None


def _make_parent(path: Path) -> None:
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file is where a folder should be",
                                     str(folder))
    parent.mkdir(parents=True, exist_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sweep_stale(folder: Path, name: str) -> None:
    """Delete temporaries of `name` left in `folder` by writers that no longer run (kill -9)."""
    for old in folder.glob(f".{name}.*.tmp*"):
        pid = old.name[len(name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, else delete it."""
    path = Path(path)
    with _naming(path):
        _make_parent(path)
        _sweep_stale(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        with _naming(path):
            yield Path(tmp)
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_files(contents: dict[Path, bytes | str]) -> None:
    """Write every file to its temporary, then rename them all: a failure on any leaves every
    target as it was (a rename after all writes succeeded is the one step that could still fail
    part-way, and renames within a folder do not run out of space)."""
    with ExitStack() as stack:
        # atomic_path renames on exit; ExitStack exits in reverse, after every file is written.
        for path, data in contents.items():
            tmp = stack.enter_context(atomic_path(path))
            with _naming(Path(path)):
                tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` whole."""
    path = Path(path)
    with _naming(path):
        _make_parent(path)
        _sweep_stale(path.parent, path.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                    dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    try:
        with _naming(path):
            yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp-old",
                                        dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(obj) -> str:
    """Indented, key-sorted JSON: the same object always gives the same bytes."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def load_json(path: str | Path, what: str = "JSON file") -> dict:
    """A JSON object from `path`; missing, unparsable or not an object is one UnreadableFile."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise UnreadableFile(f"{path}: no such file (run the stage that writes it)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UnreadableFile(f"{path}: not a readable {what} ({e})") from None
    if not isinstance(obj, dict):
        raise UnreadableFile(f"{path}: not a {what} (a JSON object was expected)")
    return obj


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex: what names a checkpoint across runs and stages."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def torch_bytes(obj) -> bytes:
    """torch.save into memory. Writing those bytes with plain file I/O turns a full disk into
    OSError(ENOSPC) naming the file, where torch's own writer says only 'unexpected pos'."""
    import torch  # here, not at the top: the params check imports this module and not torch

    buf = _io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_torch(path: str | Path, obj) -> None:
    """torch.save `obj` to `path` atomically."""
    write_files({Path(path): torch_bytes(obj)})


def load_torch(path: str | Path, required: tuple[str, ...] = (), what: str = "torch file",
               map_location=None) -> dict:
    """Read a dict saved by `save_torch`, tensors and plain values only (`weights_only=True`:
    a crafted file cannot run code, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says).

    Raises UnreadableFile, one line naming the file, when it is missing, truncated, not a torch
    file, or lacks one of the `required` keys (a teacher checkpoint where soft targets belong);
    recorded_hashes.Mismatch when its bytes are not those dvc.lock records for it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UnreadableFile(f"{path}: no such file (run the stage that writes it)")
    verify(path)  # a flipped byte can still unpickle: weights of noise, read without a word
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # RuntimeError, EOFError, UnpicklingError, BadZipFile, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFile(f"{path}: not a readable {what} (truncated or corrupt: "
                             f"{reason[:200]}); rerun the stage that writes it") from None
    missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise UnreadableFile(f"{path}: not a {what} (no {', '.join(missing)}); "
                             "rerun the stage that writes it")
    return obj
