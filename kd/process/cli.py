"""Command-line plumbing every stage shares: the --params flag, and turning known failures into a
one-line message and a non-zero exit status instead of a traceback.

Exit status 2: params.yaml is invalid (nothing was read or written).
Exit status 1: the data, a model, training, MLflow or a write failed; the stage's outputs are as
they were (each stage writes all its files together, last: see kd/process/files.py; under DVC, which
deleted them before the stage started, they are copied back from its cache: kd/process/restore_outputs.py).
Exit status 128 + N: signal N stopped the stage (130: Ctrl-C, 143: SIGTERM; kd/process/interrupt.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kd.config.experiment_names import experiment_name_error
from kd.config.params import Params, ParamsError, load
from kd.errors import PipelineError
from kd.process import distributed, interrupt, numerics, params_watch, restore_outputs


class _Stdout(logging.Handler):
    """Prints the library's progress messages to whatever sys.stdout is at the time: a test's
    capture, or /dev/null on torchrun's non-zero ranks."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


def show_progress() -> None:
    """Let the kd modules' progress messages (logging, INFO) through to stdout, once."""
    logger = logging.getLogger("kd")
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a handler a library put on the root would print them twice
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        logger.addHandler(_Stdout())


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The stage's argument parser (its docstring as help); the stage's progress shows."""
    show_progress()
    summary, _, details = (doc or "").partition("\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details.strip() or None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


def data_option(ap: argparse.ArgumentParser, what: str = "prepared dataset folder") -> None:
    ap.add_argument("--data", help=f"{what} (default: data/<dataset>)")


def path_option(ap: argparse.ArgumentParser, name: str, default: str, what: str) -> None:
    """--<name> PATH, a file or folder the stage reads or writes, with its default in the help."""
    ap.add_argument(f"--{name}", type=Path, default=Path(default), help=f"{what} (default: {default})")


def model_outputs(ap: argparse.ArgumentParser, name: str) -> None:
    """--model, --metrics, --plots: what a training stage writes for model `name`."""
    path_option(ap, "model", f"model/{name}.pt", "checkpoint to write")
    path_option(ap, "metrics", f"metrics/{name}.json", "final metrics JSON")
    path_option(ap, "plots", f"plots/{name}.csv", "per-epoch metrics CSV")


def params_or_exit(path: str, *checks: Callable[[Params], object]) -> Params:
    """The validated params, with their numerics in force (kd/process/numerics.py); else one line and
    exit status 2. `checks` are the validations an extension point owns (kd.losses.validate: the
    loss and its knobs), for the stages that use it."""
    try:
        p = load(path)
        for check in checks:
            try:
                check(p)
            except ParamsError as e:  # every message names the file once, then the key
                raise ParamsError(f"{path}: {e}") from None
        _check_experiment_name()
        params_watch.loaded(path)
        numerics.apply(p.numerics)
    except (ParamsError, params_watch.ParamsChanged) as e:
        note = _keep_outputs()
        print(f"error: {e}{note}", file=sys.stderr)  # the message starts with the file's name
        raise SystemExit(2) from None
    except numerics.NumericsError as e:
        note = _keep_outputs()
        print(f"error: {path}: {e}{note}", file=sys.stderr)
        raise SystemExit(2) from None
    return p


def _check_experiment_name() -> None:
    """`dvc exp run -n NAME`: a name DVC cannot store would fail only after every stage ran."""
    name = os.environ.get("DVC_EXP_NAME")
    reason = experiment_name_error(name) if name else None
    if reason:
        shown = name if len(name) <= 40 else f"{name[:40]}..."
        raise ParamsError(f"experiment name {shown!r} (DVC_EXP_NAME): {reason}")


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Known failures, and any OSError (a file or folder the stage could not use), as one line;
    a stop signal as `interrupted: <stage> (<signal>)`. Whatever ends the stage, its previous
    outputs are put back (see the module's docstring)."""
    try:
        yield
    except interrupt.Interrupted as e:
        note = _keep_outputs()
        print(f"{_rank()}{interrupt.message(e)}{note}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_status) from None
    except PipelineError as e:
        note = _keep_outputs()
        print(f"error: {_rank()}{e}{note}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        note = _keep_outputs()
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {_rank()}{where}{e.strerror or e}{note}", file=sys.stderr)
        raise SystemExit(1) from None
    except BaseException:  # a bug: its traceback follows, and the outputs are kept all the same
        _keep_outputs()
        raise


def _keep_outputs() -> str:
    """Put the stage's outputs back, whatever signals arrive meanwhile (a second Ctrl-C must not
    cut a copy short); '' or the note naming what is still missing, for the one line."""
    if not distributed.is_main():  # one rank puts the files back
        return ""
    with interrupt.shielded():
        return restore_outputs.restore_outputs().note()


interrupt.at_exit(_keep_outputs)  # a second stop signal ends the process: outputs back first


def _rank() -> str:
    """Under torchrun every rank reports its own failure: say which one did."""
    return f"rank {distributed.rank()}: " if distributed.world_size() > 1 else ""
