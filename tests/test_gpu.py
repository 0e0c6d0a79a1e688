"""The GPU path (data on the device, bf16 autocast): skipped where there is no CUDA device.

Tracking is off here: the GPU machines these run on need not have MLflow, and logging a model
(moved to the CPU first) is pinned by tests/test_stages.py.
"""


import hashlib

import pytest
import torch

from tests.conftest import distill_with, metrics_file, run_stage, tiny_params, write_params

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_stages_train_on_the_gpu_with_bf16(workdir, monkeypatch):
    monkeypatch.setenv("KD_TRACKING", "off")
    distill_with(workdir, shift=1)  # augmentation: the teacher also runs online, under autocast
    for name in ("teacher", "distilled"):
        m = metrics_file(workdir, name)
        assert 0.5 <= m["test_acc"] <= 1.0  # digits: well above chance (0.1) after 2 epochs
    ckpt = torch.load(workdir / "model/distilled.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())  # portable checkpoint
    assert ckpt["test_logits"].dtype == torch.float32 and ckpt["test_logits"].isfinite().all()


def test_autocast_is_bf16_on_cuda():
    from kd.train import device

    with device.autocast(torch.device("cuda")):
        y = torch.nn.Linear(4, 4).cuda()(torch.randn(2, 4, device="cuda"))
    assert y.dtype == torch.bfloat16


def test_portable_numerics_repeat_their_bytes_on_the_gpu(tmp_path, monkeypatch):
    """Deterministic algorithms (kd/process/numerics.py): the same stages twice on one card write the
    same files, convolutions, pooling and the online teacher under bf16 included."""
    monkeypatch.setenv("KD_TRACKING", "off")
    raw = tiny_params()
    raw["teacher"].update(arch="cnn:8-16", dropout=0.3)
    raw["distill"].update(shift=1, flip=True)
    found = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        folder.mkdir()
        monkeypatch.chdir(folder)
        write_params(folder, raw)
        for name in ("download", "teacher", "soft_targets", "distill"):
            run_stage(name)
        assert torch.are_deterministic_algorithms_enabled()
        found.append({f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in
                      ("model/teacher.pt", "model/soft_targets.pt", "model/distilled.pt",
                       "metrics/distilled.json", "plots/distilled.csv")})
    assert found[0] == found[1]


def test_the_gpu_trains_what_the_cpu_trains_within_bf16s_tolerance(tmp_path, monkeypatch):
    """The same digits stages on the CPU (fp32) and on the card (bf16 autocast, other kernels):
    not the same bits (README: Numerics), but the same models within a stated tolerance: test
    accuracy within 5 points (15 of the 297 test images) and the same predicted class on at least
    90% of them, for the teacher and the distilled student."""
    monkeypatch.setenv("KD_TRACKING", "off")
    found = {}
    for where in ("cpu", "cuda"):
        folder = tmp_path / where
        folder.mkdir()
        monkeypatch.chdir(folder)
        write_params(folder, tiny_params())
        with monkeypatch.context() as m:
            if where == "cpu":
                m.setattr(torch.cuda, "is_available", lambda: False)  # device.pick() takes the CPU
            for name in ("download", "teacher", "soft_targets", "distill"):
                run_stage(name)
        found[where] = {name: (metrics_file(folder, name)["test_acc"],
                               torch.load(folder / f"model/{name}.pt")["test_logits"].argmax(1))
                        for name in ("teacher", "distilled")}
    for name in ("teacher", "distilled"):
        (cpu_acc, cpu_pred), (gpu_acc, gpu_pred) = found["cpu"][name], found["cuda"][name]
        assert abs(cpu_acc - gpu_acc) <= 0.05, (name, cpu_acc, gpu_acc)
        assert (cpu_pred == gpu_pred).float().mean() >= 0.9, name
