"""What each supported dataset is: file names, official URLs, checksums, classes.

The md5 values are those published with the canonical files (they agree with
torchvision's tables and the CIFAR home page). The payload sha256 values of
Fashion-MNIST were measured on Debian's ``dataset-fashion-mnist`` package,
whose .gz files were re-compressed and so have other md5 values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .checksums import Checksum, ChecksumTable
from .cifar import CIFAR10_LAYOUT, CIFAR100_LAYOUT, CifarLayout
from .idx import IDX_FILES

__all__ = ["DATASET_NAMES", "DatasetSpec", "SPECS", "canonical_name", "get_spec"]


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of one downloadable dataset."""

    name: str
    format: Literal["idx", "cifar"]
    base_url: str  # download URL of file f is base_url + f
    download_files: tuple[str, ...]
    checksums: ChecksumTable
    class_names: tuple[str, ...]
    cifar_layout: CifarLayout | None = None
    extra_fixes: tuple[str, ...] = ()  # dataset-specific advice for error messages

    def url(self, file_name: str) -> str:
        return self.base_url + file_name


_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
# Order of fine_label_names.txt in the binary release (label i = name i).
_CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle
bowl boy bridge bus butterfly camel can castle caterpillar cattle
chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain
mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket
rose sea seal shark shrew skunk skyscraper snail snake spider
squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split())


def _idx_table(md5s: tuple[str, ...], sha256s: tuple[str | None, ...]) -> ChecksumTable:
    return {
        name: Checksum(md5=md5, payload_sha256=sha)
        for name, md5, sha in zip(IDX_FILES, md5s, sha256s, strict=True)
    }


SPECS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        format="idx",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        download_files=IDX_FILES,
        checksums=_idx_table(
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
            (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
        class_names=_FASHION_CLASSES,
        extra_fixes=(
            "on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
            "(installs the files into /usr/share/datasets/fashion-mnist)",
        ),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        format="idx",
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        download_files=IDX_FILES,
        checksums=_idx_table(
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
            (None, None, None, None),
        ),
        class_names=tuple(str(digit) for digit in range(10)),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        format="cifar",
        base_url="https://www.cs.toronto.edu/~kriz/",
        download_files=(CIFAR10_LAYOUT.archive,),
        # Member md5s let an already-extracted folder be verified too.
        checksums={
            CIFAR10_LAYOUT.archive: Checksum(md5="c32a1d4ab5d03f1284b67883e8d87530"),
            "data_batch_1.bin": Checksum(md5="5dd7e06a14cb22eb9f671a540d1b7c25"),
            "data_batch_2.bin": Checksum(md5="5ea93a67294ea407fff1d09f752e9692"),
            "data_batch_3.bin": Checksum(md5="942cd6a4bcdd0dd3c604fbe906cb4421"),
            "data_batch_4.bin": Checksum(md5="ae636b3ba5c66a11e91e8cb52e771fcb"),
            "data_batch_5.bin": Checksum(md5="53f37980c15c3d472c316c40844f3f0d"),
            "test_batch.bin": Checksum(md5="803d5f7f4d78ea53de84dbe85f74fb6d"),
        },
        class_names=_CIFAR10_CLASSES,
        cifar_layout=CIFAR10_LAYOUT,
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        format="cifar",
        base_url="https://www.cs.toronto.edu/~kriz/",
        download_files=(CIFAR100_LAYOUT.archive,),
        checksums={
            CIFAR100_LAYOUT.archive: Checksum(md5="03b5dce01913d631647c71ecec9e9cb8"),
            "train.bin": Checksum(md5="6172c7755cfe09b2fe270c85cebc1b15"),
            "test.bin": Checksum(md5="4499cfba6c016c1be1438163640a0898"),
        },
        class_names=_CIFAR100_CLASSES,
        cifar_layout=CIFAR100_LAYOUT,
    ),
}

DATASET_NAMES = (*SPECS, "synthetic")

_ALIASES = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10", "cifar_100": "cifar100"}


def canonical_name(name: str) -> str:
    """Normalise spelling (``"Fashion-MNIST"`` -> ``"fashion_mnist"``); ValueError if unknown."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return key


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a downloadable dataset."""
    key = canonical_name(name)
    if key not in SPECS:
        raise ValueError(f"{name!r} is generated, not loaded from files")
    return SPECS[key]
