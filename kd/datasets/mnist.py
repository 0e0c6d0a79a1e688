"""MNIST: LeCun et al. (1998), 28x28 grey handwritten digits; the dataset of Hinton et al.'s
section 3 (`-S preset=hinton-mnist`)."""

from kd.datasets import Dataset

DATASET = Dataset(
    name="mnist", classes=10, side=28, channels=1, train_images=60_000,
    presets=("hinton-mnist", "patient-consistent"),
    format="idx", class_names=tuple(map(str, range(10))),
    checksums={  # SHA-256 of the decompressed IDX files: recompressed copies have other .gz sums
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    torchvision="MNIST",
    offline="put the four MNIST IDX files (.gz or not) in a folder and set data.root to it")
