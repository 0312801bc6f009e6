"""Classification datamodules (npz, image folders, webdataset shards) and resumable loading."""

from recipes.data.classification import ClassificationData, ImageFolderData, NpzData, ShardData, build_transforms
from recipes.data.loader import ResumableDataLoader, ResumableSampler, skip_none_collate

__all__ = [
    "ClassificationData",
    "ImageFolderData",
    "NpzData",
    "ResumableDataLoader",
    "ResumableSampler",
    "ShardData",
    "build_transforms",
    "skip_none_collate",
]
