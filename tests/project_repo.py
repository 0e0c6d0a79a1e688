"""A temporary git repository holding a copy of the project, for the tests that drive DVC over
the real pipeline (tests/test_pipeline_e2e.py, tests/test_sweep.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, tiny_params

PROJECT_FILES = ("kd", "stages", "tools", "conf", "dvc.yaml", "params.yaml", ".dvc/config",
                 ".dvcignore", ".gitignore", "pyproject.toml")


def sh(repo: Path, *cmd: str, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout,
                          env=env())
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def env() -> dict:
    """The environment DVC and the stages run in: this interpreter first, the default store."""
    out = dict(os.environ)
    # The stages' `python` must be this interpreter (uv run puts .venv/bin first the same way).
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out['PATH']}"
    out.pop("MLFLOW_TRACKING_URI", None)  # exercise the default store at DVC_ROOT
    out.pop("KD_TRACKING", None)
    out.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    return out


def make_project_repo(repo: Path, **sections: dict) -> None:
    """A git repository holding a copy of the project (every tracked file, plus the project's
    folders as they are now) on digits with one epoch per model, and `sections`' values
    (`teacher={"arch": "cnn:8-16"}`) over those.

    `dvc exp run` recomposes params.yaml from conf/ (Hydra), so the tiny values go into
    conf/config.yaml and params.yaml is composed from it by DVC's own function, as committed."""
    from dvc.utils.hydra import compose_and_dump

    tracked = sh(ROOT, "git", "ls-files").splitlines()
    for rel in sorted({*tracked, *PROJECT_FILES}):
        src, dst = ROOT / rel, repo / rel
        if not src.exists() or rel.startswith(("data/", "model/", "metrics/", "plots/", "report/",
                                               "results/", "dvc.lock")):
            continue  # deleted but not committed, or outputs of the real run
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    params = tiny_params()
    for section in ("teacher", "student", "distill"):
        params[section]["epochs"] = 1
    for section, values in sections.items():
        params[section].update(values)
    conf = {"defaults": ["_self_", {"dataset": "digits"}, {"preset": "none"}], **params}
    (repo / "conf" / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    compose_and_dump(repo / "params.yaml", str(repo / "conf"), None, "config", str(repo), [])
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")
