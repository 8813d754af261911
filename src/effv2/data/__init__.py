"""The data layer: sources (named data sets, image folders, CSV manifests) and deterministic batches.

See docs/data.md for the user-facing guarantees.
"""

from .imagesets import FileImageSet, ImageSet, TensorImageSet
from .loader import Batch, eval_batches, steps_per_epoch, train_batches
from .sources import DataBundle, list_sources, load_source

__all__ = [
    "Batch",
    "DataBundle",
    "FileImageSet",
    "ImageSet",
    "TensorImageSet",
    "eval_batches",
    "list_sources",
    "load_source",
    "steps_per_epoch",
    "train_batches",
]
