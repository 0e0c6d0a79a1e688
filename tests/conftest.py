"""Shared fixtures: tiny params on scikit-learn's digits, and a throwaway MLflow store."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib
import json
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kd.process import numerics, wait_policy

# Before torch computes anything in this process: the tests run under portable numerics, as the
# stages do (stages/__init__.py), whatever the working copy's params.yaml says, and their idle
# threads sleep, so that the test processes (one per core) do not spin on each other's cores.
numerics.set_portable_env()
wait_policy.prepare()
# A suite started in the background (`bash run.sh tests &` from a script) inherits SIGINT
# ignored, and so would every process it starts (an ignored signal survives exec): the tests
# that press Ctrl-C, and the one that reads Python's own handler, need what a terminal gives.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The suite's longest files (seconds alone on 2 cores, `--durations`), started first: pytest-xdist
# hands whole files (`--dist loadfile`) to whichever process is free, in collection order under
# run.sh's `--no-loadscope-reorder`, so a long file collected last would run on while the other
# processes idle.
LONGEST_FIRST = ("test_interrupts.py", "test_pipeline_e2e.py", "test_benchmark.py",
                 "test_numerics.py", "test_shared_services.py", "test_extensions.py",
                 "test_distributed.py", "test_stopping.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first; every file's tests stay together and in their order."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)


TINY_TRAIN = {"epochs": 2, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
              "shift": 0, "flip": False, "grad_clip": 0.0, "mixup": 0.0}
TINY_MODEL = {"arch": "auto", "input_dropout": 0.0, "dropout": 0.0, "max_norm": 0.0}


def committed(rel: str) -> str:
    """A file's text as HEAD has it: what the repository ships (for params.yaml, the defaults or
    an experiment kept with `dvc exp apply` and a commit), not what a user's experiments
    (`dvc exp run -S ...` rewrites params.yaml) left in the working copy. Outside a git checkout
    (an unpacked archive), the file itself."""
    proc = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else (ROOT / rel).read_text()


def composed(*overrides: str) -> dict:
    """What `dvc exp run -S <override>...` writes into params.yaml: conf/ composed by DVC's own
    function. The project's defaults (with no overrides), whatever experiment the working copy's
    or HEAD's params.yaml holds (`dvc exp apply` and a commit keep one there)."""
    from dvc.utils.hydra import compose_and_dump

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "params.yaml"
        compose_and_dump(out, str(ROOT / "conf"), None, "config", str(ROOT), list(overrides))
        return yaml.safe_load(out.read_text())


def shipped_knobs() -> dict:
    """conf/config.yaml's `distill.<loss>_<knob>` defaults, for every loss kd/losses/ registers."""
    from kd import losses

    distill = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["distill"]
    return {k: v for k, v in distill.items() if k.split("_")[0] in losses.names()}


def tiny_params() -> dict:
    """A complete, valid params mapping that trains in a second on digits."""
    return copy.deepcopy({
        "dataset": "digits", "preset": "none", "seed": 0, "T": 4, "alpha": 0.9,
        "launch": "python", "numerics": "portable",
        "data": {"root": None, "val_fraction": 0.1, "split_seed": 0},
        "teacher": {**TINY_MODEL, **TINY_TRAIN},
        "student": {**TINY_MODEL, **TINY_TRAIN},
        # every loss's knobs as conf/ ships them (whatever losses kd/losses/ holds), but DKD's
        # authors' beta, which diverges on real data, not in these tests
        "distill": {**TINY_TRAIN, "omit_classes": [], "keep_classes": [], "fraction": 1.0,
                    "bias_correction": "auto", "loss": "kd", **shipped_knobs(), "dkd_beta": 8.0},
    })


STAGES = ("download", "teacher", "student", "soft_targets", "distill", "report")


@contextlib.contextmanager
def project(tmp_path_factory, name: str, **env: str) -> Iterator[tuple[Path, str]]:
    """A module's project folder (tiny params) with its own MLflow store, as the working
    directory with `env` set: yields (folder, tracking URI); run the stages in it."""
    folder = tmp_path_factory.mktemp(name)
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.delenv("KD_TRACKING", raising=False)
    for key, value in env.items():
        mp.setenv(key, value)
    write_params(folder, tiny_params())
    try:
        yield folder, uri
    finally:
        mp.undo()


def write_params(folder: Path, params: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def metrics_file(folder: Path, name: str) -> dict:
    """metrics/<name>.json of a project folder, parsed."""
    return json.loads((folder / f"metrics/{name}.json").read_text())


def run_stage(name, *argv):
    importlib.import_module(f"stages.{name}").main(list(argv))


def distill_with(workdir, **distill):
    """Write tiny params with these `distill.*` values, then run the stages up to distill."""
    raw = tiny_params()
    raw["distill"].update(distill)
    write_params(workdir, raw)
    for name in ("download", "teacher", "soft_targets", "distill"):
        run_stage(name)


# --- fault tests: a stage that fails must say so in one line and change nothing ----------------


def hash_tree(folder) -> dict:
    """{relative path: sha256 of a file, None for a folder} for everything under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else None for p in sorted(folder.rglob("*"))}


def one_line_error(capsys) -> str:
    """The captured stderr, asserted to be exactly one line starting with `error: `."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    return err


def fails_cleanly(main, argv, folder, capsys, code: int = 1) -> str:
    """Run a stage's main(argv); assert exit `code`, one error line and `folder` unchanged."""
    before = hash_tree(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == code
    msg = one_line_error(capsys)
    assert hash_tree(folder) == before
    return msg


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """Point MLflow at a temporary SQLite store for the test; returns its URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("KD_TRACKING", raising=False)
    return uri


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh folder as the working directory, holding a tiny params.yaml."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    return tmp_path


def patch_dataset(monkeypatch, name: str, **changes) -> None:
    """Make kd.datasets.get(name) answer with these fields changed (a test's own checksums or
    system folder), as a dataset module that says so would."""
    from kd import datasets

    real = datasets.get
    entry = dataclasses.replace(real(name), **changes)
    monkeypatch.setattr(datasets, "get", lambda n: entry if n == name else real(n))
