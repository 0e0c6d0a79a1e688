"""Transfer-set controls and bias correction (Hinton et al. section 3), pinned on small data."""

import json

import mlflow
import pytest
import torch

from kd.train.transfer import absent_classes, add_output_bias, best_bias_shift, transfer_indices
from tests.conftest import distill_with

LABELS = torch.arange(200) % 10  # 20 images of each of 10 classes


def test_everything_by_default():
    assert torch.equal(transfer_indices(LABELS, (), (), 1.0, 0), torch.arange(200))


def test_omit_classes_removes_exactly_them():
    idx = transfer_indices(LABELS, (3,), (), 1.0, 0)
    assert len(idx) == 180 and 3 not in LABELS[idx].tolist()
    assert absent_classes(LABELS, idx, 10) == [3]


def test_keep_classes_keeps_only_them():
    idx = transfer_indices(LABELS, (), (7, 8), 1.0, 0)
    assert sorted(set(LABELS[idx].tolist())) == [7, 8] and len(idx) == 40
    assert absent_classes(LABELS, idx, 10) == [0, 1, 2, 3, 4, 5, 6, 9]


def test_fraction_is_stratified_seeded_and_sized():
    idx = transfer_indices(LABELS, (), (), 0.1, seed=0)
    assert torch.bincount(LABELS[idx], minlength=10).tolist() == [2] * 10
    assert torch.equal(idx, transfer_indices(LABELS, (), (), 0.1, seed=0))
    assert not torch.equal(idx, transfer_indices(LABELS, (), (), 0.1, seed=1))
    assert len(transfer_indices(LABELS, (3,), (), 0.03, 0)) == 9  # at least one per class left


def test_best_shift_recovers_a_known_offset_on_validation():
    # A model that under-rates class 3 by 4.0: the best correction is close to +4.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(500) % 10
    logits = torch.randn(500, 10, generator=g) + 6 * torch.nn.functional.one_hot(labels, 10)
    logits[:, 3] -= 4.0
    shift = best_bias_shift(logits, labels, [3])
    assert 2.5 <= shift <= 5.5
    fixed = logits.clone()
    fixed[:, 3] += shift
    assert (fixed.argmax(1) == labels).float().mean() > (logits.argmax(1) == labels).float().mean()


def test_add_output_bias_touches_only_the_last_layer_classes():
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    before = [p.detach().clone() for p in model.parameters()]
    add_output_bias(model, [1], 2.5)
    after = list(model.parameters())
    for b, a in zip(before[:3], after[:3], strict=True):
        assert torch.equal(b, a)
    assert torch.allclose(after[3] - before[3], torch.tensor([0.0, 2.5, 0.0]))


@pytest.mark.parametrize("setting", ["auto", 3.5])
def test_distill_stage_omits_a_class_and_corrects_its_bias(workdir, mlflow_store, setting):
    distill_with(workdir, omit_classes=[3], bias_correction=setting)
    m = json.loads((workdir / "metrics/distilled.json").read_text())
    n_train_without_3 = sum(1 for y in torch.load(workdir / "data/digits/train.pt")["y"].tolist()
                            if y != 3)
    assert m["transfer_images"] == n_train_without_3
    if setting == 3.5:
        assert m["bias_correction"] == 3.5
    # The saved model is the corrected one: its test logits less the shift on class 3 give the
    # uncorrected errors, and as they are, the corrected ones.
    labels = torch.load(workdir / "data/digits/test.pt")["y"]
    logits = torch.load(workdir / "model/distilled.pt")["test_logits"]
    assert int((logits.argmax(1) != labels).sum()) == m["test_errors"]
    logits[:, 3] -= m["bias_correction"]
    assert int((logits.argmax(1) != labels).sum()) == m["test_errors_uncorrected"]
    assert m["test_acc_uncorrected"] == 1 - m["test_errors_uncorrected"] / len(labels)
    # MLflow shows the corrected result too, not the last epoch's uncorrected one.
    mlflow.set_tracking_uri(mlflow_store)
    (run,) = mlflow.search_runs(experiment_names=["knowledge-distillation"],
                                filter_string="tags.`dvc.stage` = 'distill'", output_format="list")
    assert run.data.metrics["test_errors"] == m["test_errors"]
    assert run.data.metrics["test_errors_uncorrected"] == m["test_errors_uncorrected"]


def test_distill_stage_on_a_fraction(workdir, mlflow_store):
    distill_with(workdir, fraction=0.1)
    m = json.loads((workdir / "metrics/distilled.json").read_text())
    counts = torch.bincount(torch.load(workdir / "data/digits/train.pt")["y"], minlength=10)
    assert m["transfer_images"] == sum(max(1, round(0.1 * int(c))) for c in counts)  # 10% per class
    assert m["bias_correction"] == 0.0


def test_distill_stage_keeps_two_classes_and_corrects_the_other_eight(workdir, mlflow_store):
    """The paper's keep-only-7-and-8 transfer set through the stage: the eight absent classes all
    get the same bias shift (3.0 here), the model saved is the corrected one."""
    distill_with(workdir, keep_classes=[7, 8], bias_correction=3.0)
    m = json.loads((workdir / "metrics/distilled.json").read_text())
    train_y = torch.load(workdir / "data/digits/train.pt")["y"]
    assert m["transfer_images"] == int(((train_y == 7) | (train_y == 8)).sum())
    assert m["bias_correction"] == 3.0
    labels = torch.load(workdir / "data/digits/test.pt")["y"]
    logits = torch.load(workdir / "model/distilled.pt")["test_logits"]
    assert int((logits.argmax(1) != labels).sum()) == m["test_errors"]
    absent = [c for c in range(10) if c not in (7, 8)]
    logits[:, absent] -= 3.0
    assert int((logits.argmax(1) != labels).sum()) == m["test_errors_uncorrected"]
    # uncorrected, a student that saw only 7s and 8s gets most other digits wrong
    assert m["test_errors_uncorrected"] > 0.6 * len(labels)
    assert m["test_errors"] != m["test_errors_uncorrected"]  # the shift changed predictions
