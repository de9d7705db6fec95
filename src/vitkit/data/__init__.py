"""Datasets, image decoding, batch augmentation and resumable loaders (no torchvision).

Typical use::

    from vitkit import data
    train = data.build_dataset("fashion-mnist", "train", data_dir="~/data")
    loader = data.make_loader(train, 256, shuffle=True, drop_last=True, seed=0, device="cuda")
    augment = data.build_train_augment(28, rrc_scale=None, pad_crop=2, hflip=True).cuda()
    normalize = data.Normalize(*data.dataset_stats("fashion-mnist", train)).cuda()
    for x, y in loader:
        x = normalize(augment(x))
"""

from .base import DatasetNotFoundError, ImageSizeError, TensorImageDataset, check_image_size
from .cifar import CIFAR10, CIFAR10_CLASSES, CIFAR10JPEG, CIFAR100, default_cache_dir
from .datasets import DigitsDataset
from .factory import (
    DATASET_STATS,
    build_dataset,
    canonical_name,
    dataset_stats,
    list_datasets,
    resolve_data_dir,
)
from .folder import FileImageDataset, ImageFolder, ManifestDataset, read_manifest
from .idx import MNIST, FashionMNIST, IDXDataset, IDXError, read_idx, write_idx
from .images import (
    IMG_EXTENSIONS,
    BadImageError,
    DecodedImage,
    decode_image,
    image_channels,
    load_image,
    load_label_map,
    majority_channels,
    orient_boxes,
    orient_label_map,
    to_tensor,
)
from .loader import (
    DatasetLoader,
    EpochSampler,
    TensorBatchLoader,
    epoch_permutation,
    make_dataloader,
    make_loader,
)
from .mixup_cutmix import MixupCutmix, smooth_one_hot
from .safe_pickle import RestrictedUnpickler, UnsafePickleError, safe_load_pickle
from .subset import SubsetDataset, stratified_indices, stratified_subset
from .text import TextClassificationDataset, TextTokenizer, is_text_dataset
from .transforms import (
    Normalize,
    Resize,
    TrainAugment,
    build_eval_transform,
    build_train_augment,
    resize_batch,
)

__all__ = [
    # datasets
    "TensorImageDataset",
    "DigitsDataset",
    "IDXDataset",
    "MNIST",
    "FashionMNIST",
    "CIFAR10",
    "CIFAR100",
    "CIFAR10JPEG",
    "CIFAR10_CLASSES",
    "FileImageDataset",
    "SubsetDataset",
    "TextClassificationDataset",
    "TextTokenizer",
    "is_text_dataset",
    "stratified_indices",
    "stratified_subset",
    "ImageFolder",
    "ManifestDataset",
    "read_manifest",
    "DatasetNotFoundError",
    "ImageSizeError",
    "check_image_size",
    "default_cache_dir",
    # factory / stats
    "build_dataset",
    "list_datasets",
    "canonical_name",
    "resolve_data_dir",
    "dataset_stats",
    "DATASET_STATS",
    # file formats
    "IDXError",
    "read_idx",
    "write_idx",
    "IMG_EXTENSIONS",
    "BadImageError",
    "DecodedImage",
    "decode_image",
    "load_image",
    "load_label_map",
    "image_channels",
    "majority_channels",
    "orient_boxes",
    "orient_label_map",
    "to_tensor",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "safe_load_pickle",
    # transforms
    "Normalize",
    "Resize",
    "resize_batch",
    "TrainAugment",
    "build_train_augment",
    "build_eval_transform",
    "MixupCutmix",
    "smooth_one_hot",
    # loaders
    "TensorBatchLoader",
    "DatasetLoader",
    "EpochSampler",
    "epoch_permutation",
    "make_loader",
    "make_dataloader",
]
