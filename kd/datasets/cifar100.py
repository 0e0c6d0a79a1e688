"""CIFAR-100: Krizhevsky (2009), 32x32 colour images of 100 classes, torchvision's python archive;
RepDistiller's benchmark (`-S preset=cifar100-resnet`)."""

from kd.datasets import Dataset

DATASET = Dataset(
    name="cifar100", classes=100, side=32, channels=3, train_images=50_000,
    presets=("cifar100-resnet",), format="cifar",
    torchvision="CIFAR100",
    offline="put cifar-100-python.tar.gz, or its extracted cifar-100-python folder, in a folder "
            "and set data.root to it")
