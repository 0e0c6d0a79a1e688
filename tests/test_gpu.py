"""The GPU path (data on the device, bf16 autocast): skipped where there is no CUDA device."""

import json

import pytest
import torch

from tests.test_stages import distill_with

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_stages_train_on_the_gpu_with_bf16(workdir, mlflow_store):
    distill_with(workdir)
    for name in ("teacher", "distilled"):
        m = json.loads((workdir / f"metrics/{name}.json").read_text())
        assert 0.0 <= m["test_acc"] <= 1.0 and m["test_loss"] == m["test_loss"]  # finite, not NaN
    ckpt = torch.load(workdir / "model/distilled.pt")
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())  # portable checkpoint


def test_autocast_is_bf16_on_cuda():
    from kd import device

    with device.autocast(torch.device("cuda")):
        y = torch.nn.Linear(4, 4).cuda()(torch.randn(2, 4, device="cuda"))
    assert y.dtype == torch.bfloat16
