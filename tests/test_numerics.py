"""Same params, seed, code and data give the same bytes, whatever the thread count or the CPU's
instruction set (kd/process/numerics.py, kd/train/fixed_order.py).

The layer tests run in this process (conftest.py pins portable numerics before torch loads); the
stage tests start each stage as a fresh process, as DVC does, under 1, 2 and 4 threads and with
every library's dispatch capped at AVX2 from outside (what an AVX2-only CPU runs), and compare
every file the stages write, byte for byte.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kd.process import numerics
from kd.train.fixed_order import BatchNorm2d, Conv2d
from tests.conftest import ROOT, composed, run_stage, tiny_params, write_params

FASHION = Path("/usr/share/datasets/fashion-mnist")
# An AVX2-only machine, as far as MKL, oneDNN and ATen can tell.
AVX2_CAPS = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "ATEN_CPU_CAPABILITY": "avx2"}
# What DVC compares and the report reads: every output of the computing stages.
OUTPUTS = ("model/teacher.pt", "model/student.pt", "model/soft_targets.pt", "model/distilled.pt",
           "metrics/teacher.json", "metrics/student.json", "metrics/distilled.json",
           "plots/teacher.csv", "plots/student.csv", "plots/distilled.csv")


def grads(conv: nn.Conv2d, x: torch.Tensor, threads: int) -> list[bytes]:
    """The bytes of one forward and backward pass's output and gradients at `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        conv.zero_grad()
        x = x.detach().requires_grad_()
        y = conv(x)
        y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
        return [t.numpy().tobytes() for t in (y.detach(), x.grad, conv.weight.grad)]
    finally:
        torch.set_num_threads(before)


def layer(cls, cin: int, cout: int, **kw) -> nn.Conv2d:
    torch.manual_seed(0)
    return cls(cin, cout, 3, padding=1, bias=False, **kw)


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("cin,cout,side,stride", [(1, 32, 28, 1), (32, 64, 14, 1), (16, 32, 16, 2)])
def test_the_convolution_gradients_are_the_same_bytes_at_any_thread_count(cin, cout, side, stride,
                                                                          fmt):
    conv = layer(Conv2d, cin, cout, stride=stride).to(memory_format=fmt)
    x = torch.randn(37, cin, side, side, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=fmt)
    one = grads(conv, x, 1)
    for threads in (2, 3, 4, 8, 16):
        assert grads(conv, x, threads) == one, threads


@pytest.mark.parametrize("arch,in_shape", [("cnn:32-64", (1, 28, 28)), ("resnet8x4", (3, 32, 32)),
                                           ("mlp:800-800", (1, 28, 28))])
def test_a_training_step_of_each_net_is_the_same_bytes_at_any_thread_count(arch, in_shape):
    """Every layer kind the models use (strided and 1x1 convolutions, BatchNorm, pooling,
    dropout, Linear), forward and backward, through the loss."""
    from kd.train.nets import build

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, *in_shape, generator=g), torch.randint(0, 10, (32,), generator=g)

    def step(threads: int) -> list[bytes]:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        net = build(arch, in_shape, 10, dropout=0.3)
        nn.functional.cross_entropy(net(x), y).backward()
        return [p.grad.contiguous().numpy().tobytes() for p in net.parameters()]

    before = torch.get_num_threads()
    try:
        one = step(1)
        for threads in (2, 3, 8):
            assert step(threads) == one, threads
    finally:
        torch.set_num_threads(before)


def test_the_fixed_order_layer_computes_what_nn_conv2d_computes():
    x = torch.randn(16, 8, 12, 12, generator=torch.Generator().manual_seed(1))
    for kw in ({"stride": 2}, {"bias": True}, {"groups": 2}):
        torch.manual_seed(0)
        ours = Conv2d(8, 16, 3, padding=1, **{"bias": False, **kw})
        torch.manual_seed(0)
        plain = nn.Conv2d(8, 16, 3, padding=1, **{"bias": False, **kw})
        a, b = ours(x.clone().requires_grad_()), plain(x.clone().requires_grad_())
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same forward kernel
        a.square().sum().backward()
        b.square().sum().backward()
        for p, q in zip(ours.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)


def test_why_the_layer_exists_onednn_splits_the_weight_gradient_by_thread():
    """The canary: if a torch or oneDNN upgrade makes every count give equal bytes, the
    convolution of kd/train/fixed_order.py can go. The default teacher's first layer, channels-last,
    as nn.Conv2d computes it."""
    conv = layer(nn.Conv2d, 1, 32).to(memory_format=torch.channels_last)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=torch.channels_last)
    one = grads(conv, x, 1)
    others = [grads(conv, x, threads) for threads in (3, 8, 16)]
    assert all(o[:2] == one[:2] for o in others)  # forward, input gradient: fixed sums
    assert any(o[2] != one[2] for o in others)  # the weight gradient: split by thread


def bn_pass(bn: nn.BatchNorm2d, x: torch.Tensor, threads: int) -> list[bytes]:
    """The bytes of one training forward and backward pass of a BatchNorm at `threads`."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        bn.zero_grad()
        x = x.detach().requires_grad_()
        y = bn(x)
        y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape)
                   .contiguous(memory_format=torch.channels_last))
        return [t.contiguous().numpy().tobytes() for t in
                (y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var)]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n,c,side", [(64, 32, 28), (37, 64, 14), (3, 256, 8), (1, 8, 5)])
def test_batchnorm_is_the_same_bytes_at_any_thread_count(n, c, side):
    x = torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(1))
    x = (3 * x + 2).contiguous(memory_format=torch.channels_last)
    results = {}
    for threads in (1, 2, 3, 4, 8, 16):
        torch.manual_seed(0)
        results[threads] = bn_pass(BatchNorm2d(c), x, threads)
    assert all(r == results[1] for r in results.values())


def test_the_fixed_order_batchnorm_computes_what_nn_batchnorm2d_computes():
    g = torch.Generator().manual_seed(1)
    x = (5 * torch.randn(16, 12, 9, 9, generator=g) + 3).contiguous(
        memory_format=torch.channels_last)
    ours, plain = BatchNorm2d(12), nn.BatchNorm2d(12)
    with torch.no_grad():
        for m in (ours, plain):
            m.weight.copy_(torch.linspace(0.5, 2, 12))
            m.bias.copy_(torch.linspace(-1, 1, 12))
    for _ in range(2):  # the running statistics follow nn's momentum rule
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(a), plain(b)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        w = torch.randn(ya.shape, generator=g)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
        x = x * 0.5 + 1
    for p, q in zip((*ours.parameters(), *ours.buffers()), (*plain.parameters(), *plain.buffers()),
                    strict=True):
        torch.testing.assert_close(p.grad if p.grad is not None else p,
                                   q.grad if q.grad is not None else q, rtol=1e-4, atol=1e-4)
    assert ours.num_batches_tracked.item() == 2
    ours.eval()
    plain.eval()
    with torch.no_grad():  # evaluation uses the running statistics, as nn.BatchNorm2d does
        torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)


def test_why_the_batchnorm_exists_aten_splits_its_sums_by_thread():
    """The canary for the BatchNorm: if ATen's channels-last kernel gives equal bytes at every
    thread count after an upgrade, kd/train/fixed_order.py's BatchNorm2d can go."""
    x = torch.randn(64, 32, 28, 28, generator=torch.Generator().manual_seed(1))
    x = (3 * x + 2).contiguous(memory_format=torch.channels_last)
    one = bn_pass(nn.BatchNorm2d(32), x, 1)
    assert any(bn_pass(nn.BatchNorm2d(32), x, threads) != one for threads in (2, 3, 8, 16))


def test_portable_numerics_refuse_a_process_where_torch_could_not_see_the_pins(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    with pytest.raises(numerics.NumericsError, match="MKL_CBWR=AUTO"):
        numerics.apply("portable")


def test_a_stage_reads_its_numerics_from_the_params_file_it_was_given(tmp_path, monkeypatch):
    for key in numerics.PORTABLE_ENV:
        monkeypatch.delenv(key, raising=False)
    raw = tiny_params()
    raw["numerics"] = "native"
    path = write_params(tmp_path, raw)
    assert numerics.prepare(["--params", str(path)]) == "native"
    assert not any(k in os.environ for k in numerics.PORTABLE_ENV)
    monkeypatch.chdir(tmp_path)
    assert numerics.prepare([]) == "native"  # params.yaml of the working directory
    assert numerics.prepare(["--params=missing.yaml"]) == "portable"
    assert all(os.environ[k] == v for k, v in numerics.PORTABLE_ENV.items())


def test_every_stage_run_records_its_numerics(tmp_path, monkeypatch, mlflow_store):
    import mlflow

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    run_stage("download")
    run_stage("teacher")
    mlflow.set_tracking_uri(mlflow_store)
    (run,) = mlflow.search_runs(experiment_names=["knowledge-distillation"], output_format="list",
                                filter_string="attributes.run_name = 'teacher'")
    p = run.data.params
    assert p["numerics"] == "portable" and p["cpu_capability"] == "AVX2"
    assert p["mkl_cbwr"] == "AVX2,STRICT" and p["onednn_max_cpu_isa"] == "AVX2"
    assert p["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    assert run.data.metrics["threads"] >= 1


# --- whole stages as processes -------------------------------------------------------------------


def digest(folder: Path, rels) -> dict[str, str]:
    return {rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest()[:16] for rel in rels}


def stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*numerics.PORTABLE_ENV, *AVX2_CAPS)}
    env.update(PYTHONPATH=str(ROOT), KD_TRACKING="off", **extra)
    return env


def run_stages(folder: Path, stages, **env: str) -> None:
    for stage in stages:
        proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=folder,
                              env=stage_env(**env), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{stage} under {env}:\n{proc.stdout}\n{proc.stderr}"


# The 4-thread run is also an AVX2-only CPU's: one run proves both, since bytes that moved with
# either would differ from the 1-thread run's.
SETTINGS = {"1 thread": {"OMP_NUM_THREADS": "1"}, "2 threads": {"OMP_NUM_THREADS": "2"},
            "4 threads under AVX2 caps": {"OMP_NUM_THREADS": "4", **AVX2_CAPS}}


def first_images(folder: Path, n: int) -> None:
    """Cut a prepared dataset to the first n images of each split: real images, fewer of them."""
    from kd.data import splits

    ds = splits.load(folder)
    meta = json.loads((folder / "meta.json").read_text())
    own = ("dataset", "classes", "shape", "mean", "std", "sizes")  # what splits.save writes itself
    cut = lambda split: splits.Split(split.x[:n], split.y[:n])  # noqa: E731
    splits.save(folder, ds.name, cut(ds.train), cut(ds.val), cut(ds.test), ds.classes,
              {k: v for k, v in meta.items() if k not in own})


def outputs_under_each_setting(tmp_path: Path, raw: dict, stages, rels,
                               keep: int | None = None) -> dict[str, dict]:
    """Download once (keeping the first `keep` images of each split, if given), then run
    `stages` in a copy of the folder per setting; the outputs' hashes."""
    base = tmp_path / "base"
    base.mkdir()
    write_params(base, raw)
    run_stages(base, ["download"])
    if keep is not None:
        first_images(base / "data" / raw["dataset"], keep)
    found = {}
    for name, env in SETTINGS.items():
        folder = tmp_path / name.replace(" ", "-")
        shutil.copytree(base, folder)
        run_stages(folder, stages, **env)
        found[name] = digest(folder, rels)
    return found


@pytest.mark.slow
def test_digits_pipeline_writes_the_same_bytes_at_1_2_4_threads_and_under_avx2_caps(tmp_path):
    raw = tiny_params()
    raw["teacher"].update(arch="cnn:8-16", dropout=0.3)  # convolutions, BatchNorm and dropout
    found = outputs_under_each_setting(tmp_path, raw, ("teacher", "student", "soft_targets",
                                                       "distill"), OUTPUTS)
    first = found["1 thread"]
    for name, hashes in found.items():
        assert hashes == first, name


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_fashion_mnist_cnn_teacher_writes_the_same_bytes_at_1_2_4_threads_and_under_avx2_caps(
        tmp_path):
    """The default teacher (its architecture, dropout and batch size) for one epoch on the first
    4,000 real images of each split (31 batches): the real kernels at the real shapes."""
    # conf/'s default teacher, whatever experiment params.yaml holds (HEAD's or the working copy's)
    raw = composed("dataset=fashion-mnist", "preset=none", "numerics=portable")
    raw["data"].update(root=str(FASHION))
    raw["teacher"].update(epochs=1)
    found = outputs_under_each_setting(tmp_path, raw, ("teacher",),
                                       ("model/teacher.pt", "metrics/teacher.json",
                                        "plots/teacher.csv"), keep=4000)
    first = found["1 thread"]
    for name, hashes in found.items():
        assert hashes == first, name
