"""Fashion-MNIST: Xiao, Rasul & Vollgraf (2017), 28x28 grey images of 10 kinds of clothing;
the default dataset, installed offline by the Debian / Ubuntu package `dataset-fashion-mnist`."""

from kd.datasets import Dataset

DATASET = Dataset(
    name="fashion-mnist", classes=10, side=28, channels=1, train_images=60_000,
    presets=("hinton-mnist", "patient-consistent"),
    format="idx",
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    checksums={  # SHA-256 of the decompressed IDX files: recompressed copies have other .gz sums
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    system_dir="/usr/share/datasets/fashion-mnist",  # Debian's and Ubuntu's package
    torchvision="FashionMNIST",
    offline="install the Debian/Ubuntu package dataset-fashion-mnist and leave data.root null, or "
            "put the four IDX files (.gz or not) in a folder and set data.root to it")
