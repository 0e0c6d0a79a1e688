"""dvc.yaml is the wiring diagram: every stage must list each local module it imports, or a code
change would not rerun it (DESIGN.md, known traps)."""

import ast
from pathlib import Path

import yaml

from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
# The stages that train or run a model start as params.yaml's `launch` says (python or torchrun).
LAUNCH = {name: "${launch}" for name in ("teacher", "student", "soft_targets", "distill")}


def _module_files(name: str) -> list[Path]:
    """The files that importing dotted `name` runs: each package's __init__.py that holds code (an
    empty one changes nothing), then the module itself; [] for a name that is not the project's."""
    parts, found = name.split("."), []
    for i in range(1, len(parts) + 1):
        base = ROOT.joinpath(*parts[:i])
        init = base / "__init__.py"
        if init.is_file():
            if init.read_text().strip():
                found.append(init)
        elif base.with_suffix(".py").is_file() and i == len(parts):
            found.append(base.with_suffix(".py"))
        elif not base.is_dir():
            return found if i > 1 and i == len(parts) else []  # `from pkg import a_function`
    return found


def local_imports(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """The project's own modules that `path` imports, transitively (paths relative to ROOT)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            for candidate in _module_files(name):
                rel = candidate.relative_to(ROOT)
                if rel not in seen:
                    seen.add(rel)
                    local_imports(candidate, seen)
    return seen


# A registry imports the module its param names at run time (importlib), which no import statement
# shows: a stage that imports the registry depends on that one module, written as dvc.yaml
# interpolates it, and on whatever the registry's modules import.
REGISTRIES = {Path("kd/losses/__init__.py"): "kd/losses/${distill.loss}.py",
              Path("kd/datasets/__init__.py"): "kd/datasets/${dataset}.py"}


def code_needed(script: Path) -> set[Path]:
    """The code files a stage's outputs depend on: its script, what it imports, what its registries
    load."""
    needed = {script} | local_imports(ROOT / script)
    for registry, entry in REGISTRIES.items():
        if registry in needed:
            needed.add(Path(entry))
            for module in (ROOT / registry.parent).glob("*.py"):
                needed |= local_imports(module)
    return needed


def test_every_stage_depends_on_its_script_and_everything_it_imports():
    for name, stage in DVC["stages"].items():
        script = Path(f"stages/{name}.py")
        assert stage["cmd"] == f"{LAUNCH.get(name, 'python')} -m stages.{name}"
        needed = code_needed(script)
        code_deps = {Path(d) for d in stage["deps"] if str(d).endswith(".py")}
        assert code_deps == needed, (
            f"{name}: missing {sorted(map(str, needed - code_deps))}, "
            f"extra {sorted(map(str, code_deps - needed))}")


def test_T_changes_only_distill_and_report():
    uses_T = {n for n, s in DVC["stages"].items() if "T" in s.get("params", [])}
    assert uses_T == {"distill", "report"}


def test_metrics_and_plots_are_git_tracked_not_cached():
    for stage in DVC["stages"].values():
        for entry in stage.get("metrics", []) + stage.get("plots", []):
            (path, opts), = entry.items()
            assert opts == {"cache": False}, path


def test_a_loss_change_reruns_only_distillation():
    """A loss is read by the distill stage, by check (which validates its knobs) and by report (which
    names it): the training loop that the teacher and student run takes its cross-entropy from
    kd/train/cross_entropy.py. Each depends on the loss in use alone, so adding or editing another
    loss reruns nothing."""
    readers = {n for n, s in DVC["stages"].items() if any(d.startswith("kd/losses/") for d in s["deps"])}
    assert readers == {"check", "distill", "report"}
    for name in readers:
        own = {d for d in DVC["stages"][name]["deps"] if d.startswith("kd/losses/")}
        assert own == {"kd/losses/__init__.py", "kd/losses/common.py", "kd/losses/${distill.loss}.py"}


def test_the_distilled_student_depends_on_the_students_network_not_its_training():
    """distill trains with distill.*'s training keys; of student.* it reads the network's alone,
    so `-S student.lr=...` reruns the student baseline but not distillation."""
    from dataclasses import fields

    from kd.config.params import Model
    student = {p for p in DVC["stages"]["distill"]["params"] if str(p).startswith("student")}
    assert student == {f"student.{f.name}" for f in fields(Model)}
