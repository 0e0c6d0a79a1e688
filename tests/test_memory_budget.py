"""Params that cannot fit in the machine's memory are refused by the check stage, in one line
with the estimate (kd/config/memory_budget.py), before any stage allocates them."""

import pytest

from kd.config import memory_budget
from kd.train import nets
from stages import check
from tests.conftest import fails_cleanly, tiny_params, write_params


@pytest.mark.parametrize("arch,in_shape", [("mlp:30-20", (1, 8, 8)), ("cnn:8-16", (1, 28, 28)),
                                           ("cnn:4", (3, 32, 32)), ("resnet8x4", (3, 32, 32)),
                                           ("resnet14x4", (1, 28, 28))])
def test_the_parameter_count_is_the_built_model_s(arch, in_shape):
    params, _ = memory_budget.layers(arch, in_shape[0], in_shape[1], 10)
    assert params == nets.count_params(nets.build(arch, in_shape, 10))


@pytest.mark.parametrize("section,changes,message", [
    ("teacher", {"shift": 1000000, "batch_size": 128},
     "teacher needs at least 512.0 TB of memory (the batch padded by shift 1000000: 512.0 TB; "
     "batch_size 128), and this machine has "),
    ("student", {"arch": "mlp:100000000-100000000"},
     "student needs at least 120.0 PB of memory (the network: 120.0 PB; batch_size 64), and "
     "this machine has "),
], ids=["shift-1e6", "mlp-1e8-wide"])
def test_params_that_cannot_fit_are_refused_at_check(section, changes, message, workdir, capsys,
                                                     monkeypatch):
    monkeypatch.setenv("KD_TRACKING", "off")
    raw = tiny_params()
    raw[section].update(changes)
    write_params(workdir, raw)
    msg = fails_cleanly(check.main, [], workdir, capsys, code=2)
    assert msg.startswith(f"error: params.yaml: {message}")
    assert msg.endswith(f"; lower {section}.batch_size, {section}.shift or {section}.arch's "
                        "widths\n")


def test_the_bound_is_the_smallest_the_process_has(monkeypatch):
    """`ulimit -v` below RAM is the bound that counts, and is named."""
    import resource
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (10**9, real(which)[1])
                        if which == resource.RLIMIT_AS else real(which))
    have, bound = memory_budget.available()
    assert (have, bound) == (10**9, "ulimit -v") or have < 10**9


def test_what_the_project_ships_fits_in_a_few_gigabytes():
    from kd.config.params import validate
    from tests.conftest import composed
    for overrides in ([], ["dataset=cifar100", "preset=cifar100-resnet"]):
        p = validate(composed(*overrides))
        assert all(memory_budget.needs(p, s)[0] < 4e9 for s in ("teacher", "student", "distill"))
