"""The two kinds of image set the loaders accept.

- ``TensorImageSet``: every image decoded once into one uint8 tensor (small data sets such as
  Fashion-MNIST and CIFAR); batches are cut and augmented as whole-batch tensor ops.
- ``FileImageSet``: paths decoded lazily with PIL in loader workers (folders, CSV manifests,
  Flowers-102, Stanford Cars).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorImageSet:
    images: torch.Tensor  # uint8 (N, C, H, W), C in {1, 3}
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> TensorImageSet:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImageSet(self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)])

    def label_list(self) -> list[int]:
        return self.labels.tolist()


@dataclass(frozen=True)
class FileImageSet:
    paths: list[str]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if any(not isinstance(lab, int) or lab < 0 for lab in self.labels):
            raise ValueError("labels must be non-negative ints")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> FileImageSet:
        idx = torch.as_tensor(indices, dtype=torch.int64).tolist()
        return FileImageSet([self.paths[i] for i in idx], [self.labels[i] for i in idx])

    def label_list(self) -> list[int]:
        return list(self.labels)


ImageSet = TensorImageSet | FileImageSet
