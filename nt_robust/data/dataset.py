"""The :class:`Dataset` container returned by every loader.

Example::

    ds = load_dataset("fashion_mnist")
    ds.image_shape          # (28, 28, 1)
    ds.summary()["num_train"]  # 60000
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .errors import DataFormatError

__all__ = ["ArraySplits", "Dataset"]


class ArraySplits(NamedTuple):
    """The four arrays a format reader produces, before they become a Dataset."""

    train_images: np.ndarray  # (N, H, W, C) uint8
    train_labels: np.ndarray  # (N,) int32
    test_images: np.ndarray
    test_labels: np.ndarray


_ARRAY_FIELDS = ("train_images", "train_labels", "test_images", "test_labels")


# eq=False: the generated __eq__/__hash__ would compare numpy arrays, which is
# ambiguous; identity semantics are what a container of big arrays wants.
@dataclass(frozen=True, eq=False)
class Dataset:
    """An image-classification dataset held in memory as numpy arrays.

    Images are uint8 NHWC in 0..255, labels int32 of shape (N,). The arrays
    are exposed as read-only views so a stray in-place shuffle cannot corrupt
    the dataset for other users; copy them first if you need to mutate.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        for field in _ARRAY_FIELDS:
            view = np.asarray(getattr(self, field)).view()
            view.flags.writeable = False
            object.__setattr__(self, field, view)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        self._validate()

    def _validate(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise DataFormatError(
                f"{self.name}: {len(self.class_names)} class names for "
                f"{self.num_classes} classes"
            )
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise DataFormatError(
                    f"{self.name}: {split}_images must be uint8 NHWC, got "
                    f"{images.dtype} with shape {images.shape}"
                )
            if labels.dtype != np.int32 or labels.shape != (images.shape[0],):
                raise DataFormatError(
                    f"{self.name}: {split}_labels must be int32 of shape "
                    f"({images.shape[0]},), got {labels.dtype} {labels.shape}"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataFormatError(
                    f"{self.name}: {split}_labels outside 0..{self.num_classes - 1}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataFormatError(
                f"{self.name}: train images {self.train_images.shape[1:]} and "
                f"test images {self.test_images.shape[1:]} differ in shape"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        h, w, c = self.train_images.shape[1:]
        return (int(h), int(w), int(c))

    def summary(self) -> dict[str, Any]:
        """Metadata worth logging next to an experiment (JSON-serialisable)."""
        return {
            "name": self.name,
            "num_train": int(self.train_images.shape[0]),
            "num_test": int(self.test_images.shape[0]),
            "image_shape": list(self.image_shape),
            "num_classes": int(self.num_classes),
            "source": self.source,
        }
