"""Command-line plumbing every stage shares: the --params flag, and turning known failures into a
one-line message and a non-zero exit status instead of a traceback.

Exit status 2: params.yaml is invalid (nothing was read or written).
Exit status 1: the data, a model, training, MLflow or a write failed; the stage's outputs are as
they were (each stage writes all its files together, last: see kd/io.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from kd import distributed
from kd.errors import PipelineError
from kd.params import Params, ParamsError, load


def parser(doc: str | None) -> argparse.ArgumentParser:
    summary, _, details = (doc or "").partition("\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details.strip() or None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


def params_or_exit(path: str) -> Params:
    try:
        p = load(path)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)  # the message starts with the file's name
        raise SystemExit(2) from None
    return p


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Known failures, and any OSError (a file or folder the stage could not use), as one line."""
    try:
        yield
    except PipelineError as e:
        print(f"error: {_rank()}{e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {_rank()}{where}{e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None


def _rank() -> str:
    """Under torchrun every rank reports its own failure: say which one did."""
    return f"rank {distributed.rank()}: " if distributed.world_size() > 1 else ""
