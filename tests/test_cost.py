"""kd/train/cost.py: a model's size and FLOPs against counts made by hand from its architecture, and
its speed measurement's shape (timings themselves are the benchmarks' business)."""

import pytest
import torch

from kd.process import files
from kd.train import cost, nets


def _mnist_model(arch: str):
    return nets.build(arch, (1, 28, 28), 10, 0.0, 0.0)


def test_default_student_mlp_800_800_counted_by_hand():
    # 784 -> 800 -> 800 -> 10: weights and biases; a multiply-add is 2 FLOPs
    got = cost.size(_mnist_model("mlp:800-800"), (1, 28, 28))
    assert got["params"] == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10 == 1_276_810
    assert got["flops_per_image"] == 2 * (784 * 800 + 800 * 800 + 800 * 10) == 2_550_400


def test_default_teacher_cnn_32_64_counted_by_hand():
    # conv 3x3 1->32 at 28x28, pool; conv 3x3 32->64 at 14x14, pool; 64*7*7 -> 256 -> 10
    flops = 2 * (1 * 32 * 9 * 28 * 28 + 32 * 64 * 9 * 14 * 14 + 64 * 7 * 7 * 256 + 256 * 10)
    assert cost.size(_mnist_model("cnn:32-64"), (1, 28, 28))["flops_per_image"] == flops == 9_287_680


@pytest.mark.parametrize("arch, in_shape", [("mlp:800-800", (1, 28, 28)), ("cnn:32-64", (1, 28, 28)),
                                             ("cnn:8-16-32", (3, 32, 32)), ("resnet8x4", (3, 32, 32))])
def test_flops_are_what_torchs_own_counter_counts(arch, in_shape):
    # cost.size counts the Linear and Conv2d layers itself (torch's counter imports torch._dynamo);
    # a strided convolution, a 1x1 shortcut and a classifier head must count as torch counts them
    from torch.utils.flop_counter import FlopCounterMode

    model = nets.build(arch, in_shape, 10).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *in_shape))
    assert cost.size(model, in_shape)["flops_per_image"] == counter.get_total_flops() > 0


def test_size_is_the_saved_state_dict_and_near_four_bytes_a_parameter():
    model = _mnist_model("mlp:800-800")
    got = cost.size(model, (1, 28, 28))["size_bytes"]
    assert got == len(files.torch_bytes(model.state_dict()))
    assert 4 * 1_276_810 < got < 4 * 1_276_810 + 16_384  # float32 plus the archive's headers


def test_size_leaves_the_callers_model_as_it_was():
    model = _mnist_model("cnn:8").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost.size(model, (1, 28, 28))
    cost.speed(model, (1, 28, 28))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too


def test_speed_reports_medians_and_the_threads():
    got = cost.speed(_mnist_model("mlp:32"), (1, 28, 28))
    assert set(got) == {"latency_ms", "throughput_per_s", "cost_threads"}
    assert got["latency_ms"] > 0 and got["throughput_per_s"] > 0
    assert got["cost_threads"] >= 1 and float(got["cost_threads"]).is_integer()


@pytest.mark.parametrize("arch", ["mlp:800-800", "cnn:32-64"])
def test_same_architecture_same_numbers(arch):
    a, b = _mnist_model(arch), _mnist_model(arch)
    torch.nn.init.zeros_(next(b.parameters()))  # other weights, same architecture
    assert cost.size(a, (1, 28, 28)) == cost.size(b, (1, 28, 28))
