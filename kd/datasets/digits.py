"""digits: scikit-learn's bundled 8x8 handwritten digits (1,797 images): seconds-fast runs, for
smoke runs and tests; nothing to download."""

from kd.datasets import Dataset

DATASET = Dataset(
    name="digits", classes=10, side=8, channels=1, train_images=1_500,
    presets=(), format="sklearn-digits",
    class_names=tuple(map(str, range(10))))
