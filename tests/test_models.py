"""Model shapes, parameter counts and the max-norm constraint."""

import copy

import pytest
import torch

from kd.config.archs import parse_arch
from kd.datasets import resolve_arch
from kd.train.nets import apply_max_norm, build, count_params


@pytest.mark.parametrize("arch,in_shape,classes", [
    ("mlp:800-800", (1, 28, 28), 10),
    ("mlp:1200-1200", (1, 28, 28), 10),
    ("cnn:32-64", (1, 28, 28), 10),
    ("cnn:32-64", (3, 32, 32), 100),
    ("resnet8x4", (3, 32, 32), 100),
    ("mlp:32", (1, 8, 8), 10),
])
def test_logits_shape(arch, in_shape, classes):
    model = build(arch, in_shape, classes).eval()
    assert model(torch.randn(3, *in_shape)).shape == (3, classes)


def test_parameter_counts_match_the_paper_and_repdistiller():
    # Hinton's MNIST nets: 784-800-800-10 and 784-1200-1200-10.
    assert count_params(build("mlp:800-800", (1, 28, 28), 10)) == 1_276_810
    assert count_params(build("mlp:1200-1200", (1, 28, 28), 10)) == 2_395_210
    # RepDistiller's CIFAR-100 pair: resnet8x4 about 1.2M, resnet32x4 about 7.4M parameters.
    assert 1.2e6 < count_params(build("resnet8x4", (3, 32, 32), 100)) < 1.3e6
    assert 7.4e6 < count_params(build("resnet32x4", (3, 32, 32), 100)) < 7.5e6


def test_dropout_only_in_training_mode():
    model = build("mlp:64", (1, 8, 8), 10, input_dropout=0.2, dropout=0.5)
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_max_norm_caps_hidden_units_not_output():
    model = build("mlp:16-16", (1, 4, 4), 3)
    for p in model.parameters():
        torch.nn.init.constant_(p, 5.0)
    apply_max_norm(model, 2.0)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for layer in linears[:-1]:
        assert torch.all(layer.weight.norm(dim=1) <= 2.0 + 1e-5)
    assert torch.all(linears[-1].weight.norm(dim=1) > 2.0)


@pytest.mark.parametrize("spec", ["mlp:", "mlp:0", "cnn:a-b", "resnet10x4", "resnet4x4", "vgg", ""])
def test_bad_architecture_names_are_rejected(spec):
    assert parse_arch(spec) is None
    with pytest.raises(ValueError, match="unknown architecture"):
        build(spec, (1, 8, 8), 10)


def test_auto_gives_a_teacher_and_student_for_every_dataset():
    from kd import datasets
    from kd.datasets import CONF

    assert {f.stem for f in (CONF / "dataset").glob("*.yaml")} == set(datasets.names())  # a file each
    for ds in datasets.names():
        teacher, student = resolve_arch("auto", ds, "teacher"), resolve_arch("auto", ds, "student")
        assert parse_arch(teacher) and parse_arch(student)
    assert resolve_arch("mlp:10", "digits", "teacher") == "mlp:10"


@pytest.mark.parametrize("arch,in_shape", [("cnn:8-16", (1, 28, 28)), ("resnet8x4", (3, 32, 32))])
def test_conv_nets_run_channels_last_and_compute_what_nchw_computes(arch, in_shape):
    torch.manual_seed(0)
    nhwc = build(arch, in_shape, 10)  # as the stages build it
    torch.manual_seed(0)
    nchw = build(arch, in_shape, 10, memory_format=torch.contiguous_format)
    # (weights of one input channel or a 1x1 kernel are both NCHW and NHWC: they tell nothing)
    formats = {name: [m.weight.is_contiguous(memory_format=torch.channels_last) for m in
                      net.modules() if isinstance(m, torch.nn.Conv2d)
                      and m.in_channels > 1 and m.kernel_size != (1, 1)]
               for name, net in (("nchw", nchw), ("nhwc", nhwc))}
    assert formats["nhwc"] and all(formats["nhwc"]) and not any(formats["nchw"])
    assert nchw.state_dict().keys() == nhwc.state_dict().keys()
    x = torch.randn(4, *in_shape)  # NCHW, as batches are cut: the forward converts it
    with torch.no_grad():
        torch.testing.assert_close(nhwc.eval()(x), nchw.eval()(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("portable", [True, False], ids=["fixed-order layers", "torch's layers"])
def test_the_cnn_pools_before_its_relu_and_computes_the_textbook_order_to_the_bit(portable,
                                                                                   monkeypatch):
    """nets.CNN runs conv -> BN -> pool -> ReLU: the same logits and gradients, bit for bit, as
    conv -> BN -> ReLU -> pool with the same weights, in training mode (batch statistics), on
    inputs whose pooling windows are partly, wholly and never negative."""
    from kd.process import numerics
    from kd.train.nets import CNN

    monkeypatch.setattr(numerics, "_mode", "portable" if portable else "native")
    torch.manual_seed(0)
    ours = build("cnn:8-16", (1, 28, 28), 10)
    assert isinstance(ours, CNN)
    textbook = copy.deepcopy(ours)
    blocks = list(textbook.features)
    for i in range(0, len(blocks), 4):  # conv, BN, pool, ReLU -> conv, BN, ReLU, pool
        blocks[i + 2], blocks[i + 3] = blocks[i + 3], blocks[i + 2]
    assert [type(m).__name__ for m in blocks[:4]] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    textbook.features = torch.nn.Sequential(*blocks)
    x = torch.randn(16, 1, 28, 28)
    x[:4] = x[:4].abs()  # images whose every first-layer input is positive
    results = []
    for net in (ours, textbook):
        net.train()
        torch.manual_seed(1)  # the same dropout masks
        loss = torch.nn.functional.cross_entropy(net(x), torch.arange(16) % 10)
        grads = torch.autograd.grad(loss, list(net.parameters()))
        results.append((loss.detach(), grads, [b.clone() for b in net.buffers()]))
    (loss_a, grads_a, buffers_a), (loss_b, grads_b, buffers_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(buffers_a, buffers_b, strict=True))
    assert any(g.abs().sum() > 0 for g in grads_a)
