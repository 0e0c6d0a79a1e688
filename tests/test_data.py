"""Validation split, stored splits and batched augmentation."""

import json

import pytest
import torch

from kd.data import splits
from kd.data.splits import Split, normalize, random_flip, random_shift, split_off_validation


def test_validation_split_is_stratified_disjoint_and_seeded():
    y = torch.arange(100) % 5
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    train, val = split_off_validation(x, y, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert torch.bincount(val.y, minlength=5).tolist() == [2] * 5
    assert not set(train.x.flatten().tolist()) & set(val.x.flatten().tolist())
    again, _ = split_off_validation(x, y, 0.1, seed=0)
    other, _ = split_off_validation(x, y, 0.1, seed=1)
    assert torch.equal(again.x, train.x) and not torch.equal(other.x, train.x)


def test_save_and_load_round_trip(tmp_path):
    x = torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(12) % 3
    s = Split(x, y)
    splits.save(tmp_path / "ds", "digits", s, s, s, ("a", "b", "c"), {"source": "test"})
    ds = splits.load(tmp_path / "ds")
    assert torch.equal(ds.train.x, x) and ds.classes == ("a", "b", "c") and ds.in_shape == (1, 4, 4)
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["sizes"] == {"train": 12, "val": 12, "test": 12}
    assert meta["mean"][0] == pytest.approx(x.double().mean().item() / 255, rel=1e-5)


def test_normalize_gives_zero_mean_unit_std():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    mean, std = splits.channel_stats(x)
    z = normalize(x, mean, std)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_shift_moves_each_image_by_its_own_offset_and_zero_fills():
    x = torch.zeros(200, 1, 9, 9, dtype=torch.uint8)
    x[:, 0, 4, 4] = 255  # one bright pixel in the centre
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    pos = torch.nonzero(out[:, 0] == 255)[:, 1:] - 4  # (dy, dx) per image
    assert len(pos) == 200  # a 2-px shift never pushes the centre pixel out
    assert pos.abs().max() == 2
    assert len({tuple(p) for p in pos.tolist()}) == 25  # all 5x5 offsets occur
    assert int(out.sum()) == 255 * 200  # nothing but the moved pixel: zero fill


def test_shift_keeps_content_of_real_images():
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    out = random_shift(x, 3, torch.Generator().manual_seed(1))
    for img, moved in zip(x, out, strict=True):
        found = any(torch.equal(torch.nn.functional.pad(img, (3,) * 4)[:, 3 - dy:15 - dy,
                                                                        3 - dx:15 - dx], moved)
                    for dy in range(-3, 4) for dx in range(-3, 4))
        assert found
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)


def test_flip_mirrors_about_half_the_batch():
    x = torch.randint(0, 256, (1000, 1, 4, 4), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1) & ~(out == x).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.all(flipped | kept) and 400 < int(flipped.sum()) < 600
