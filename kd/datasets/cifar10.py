"""CIFAR-10: Krizhevsky (2009), 32x32 colour images of 10 classes, torchvision's python archive
(its class names and md5s come with its files and torchvision's class)."""

from kd.datasets import Dataset

DATASET = Dataset(
    name="cifar10", classes=10, side=32, channels=3, train_images=50_000,
    presets=("cifar100-resnet",), format="cifar",
    torchvision="CIFAR10",
    offline="put cifar-10-python.tar.gz, or its extracted cifar-10-batches-py folder, in a folder "
            "and set data.root to it")
