"""Batch transforms on (B, C, H, W) float tensors in [0, 1], on CPU or GPU.

Augmentations run after batching, on the training device, so they cost no data-loader workers. They are
kornia's (``kornia.augmentation``: per-image random parameters, drawn on the batch's device): random-resized
crop, pad-and-crop, horizontal flip, RandAugment / TrivialAugment and random erasing. kornia is imported
when an augmentation is built, not with ``vitkit.data``. kornia's RandAugment picks its operations once per
call for the whole batch (magnitudes vary per image); ``groups=k`` calls it on k chunks so a batch mixes k
choices, at about k times the cost (RandAugment n=2 on 256x1x28x28, H100: 2.4 ms, 8.7 ms with k=4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Normalize",
    "resize_batch",
    "resize_center_crop",
    "Resize",
    "TrainAugment",
    "build_train_augment",
    "build_eval_transform",
]

Size = int | Sequence[int]

# kornia maps shear magnitudes m -> m * 180 degrees; timm's RandAugment shears by a factor of up to 0.3,
# i.e. atan(0.3) = 16.7 degrees, so the range below reproduces timm's strength. Translation: timm's 0.45.
_SHEAR = math.degrees(math.atan(0.3)) / 180.0
_RANDAUGMENT_POLICY = [
    [("auto_contrast", 0, 1)],
    [("equalize", 0, 1)],
    [("invert", 0, 1)],
    [("rotate", -30.0, 30.0)],
    [("posterize", 4.0, 8.0)],
    [("solarize", 0.0, 1.0)],
    [("solarize_add", 0.0, 0.43)],
    [("color", 0.1, 1.9)],
    [("contrast", 0.1, 1.9)],
    [("brightness", 0.1, 1.9)],
    [("sharpness", 0.1, 1.9)],
    [("shear_x", -_SHEAR, _SHEAR)],
    [("shear_y", -_SHEAR, _SHEAR)],
    [("translate_x", -0.45, 0.45)],
    [("translate_y", -0.45, 0.45)],
]


def _pair(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for (C, H, W) or (B, C, H, W) tensors."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean {mean} and std {std} must have the same length and std > 0")
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def inverse(self, x: Tensor) -> Tensor:
        """Undo the normalisation."""
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def resize_batch(x: Tensor, size: Size, mode: str = "bilinear", antialias: bool = True) -> Tensor:
    """Resize a (B, C, H, W) batch to ``size`` (no-op if already that size); uint8 input becomes float [0, 1]."""
    if not x.is_floating_point():
        x = x.float().div_(255)
    size = _pair(size)
    if tuple(x.shape[-2:]) == size:
        return x
    smooth = mode in ("bilinear", "bicubic")
    return F.interpolate(
        x, size=size, mode=mode, antialias=antialias and smooth, align_corners=False if smooth else None
    )


def resize_center_crop(x: Tensor, size: Size, crop_pct: float, mode: str = "bilinear") -> Tensor:
    """timm's evaluation transform on (..., H, W): resize so that the center ``crop_pct`` of the image is ``size``
    (a square size: the shorter side to ``int(size / crop_pct)``, the aspect ratio kept, as torchvision's
    ``Resize(int)``), then cut the center crop (torchvision's ``CenterCrop`` rounding). Antialiased."""
    size = _pair(size)
    h, w = x.shape[-2:]
    scale = [int(s / crop_pct) for s in size]
    if scale[0] == scale[1]:
        new = (scale[0], int(scale[0] * w / h)) if h <= w else (int(scale[0] * h / w), scale[0])
    else:
        new = (scale[0], scale[1])
    batch = x if x.dim() == 4 else x[None]
    batch = F.interpolate(batch, size=new, mode=mode, antialias=True, align_corners=False)
    top, left = int(round((new[0] - size[0]) / 2)), int(round((new[1] - size[1]) / 2))
    batch = batch[..., top : top + size[0], left : left + size[1]]
    return batch if x.dim() == 4 else batch[0]


class TrainAugment(nn.Module):
    """crop (random-resized or pad-and-crop, else resize) -> h-flip -> RandAugment | TrivialAugment -> erasing.

    See :func:`build_train_augment`. Input and output: float (B, C, H, W) in [0, 1]; the output has
    ``image_size`` (or the input's size when ``image_size`` is None). The crop, flip and erasing stages are
    kornia modules built here; the RandAugment / TrivialAugment policy is built on first use for the batch's
    channel count (RandAugment's 'color' op needs RGB).
    """

    def __init__(
        self,
        image_size: Size | None = None,
        *,
        rrc_scale: tuple[float, float] | None = None,
        rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = False,
        randaugment: int | None = None,
        randaugment_magnitude: float = 9.0,
        trivialaugment: bool = False,
        random_erasing: float = 0.0,
        pad_crop: int | None = None,
        pad_mode: str = "constant",
        erasing_value: float = 0.0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if randaugment and trivialaugment:
            raise ValueError("choose RandAugment or TrivialAugment, not both")
        if rrc_scale is not None and pad_crop:
            raise ValueError("choose random-resized-crop (rrc_scale) or pad-and-crop (pad_crop), not both")
        if not 0 <= random_erasing <= 1:
            raise ValueError(f"random_erasing is a probability, got {random_erasing}")
        import kornia.augmentation as K

        self.image_size = _pair(image_size) if image_size is not None else None
        self.rrc_scale = tuple(rrc_scale) if rrc_scale is not None else None
        self.pad_crop = int(pad_crop or 0)
        self.hflip = hflip
        self.randaugment_n = int(randaugment or 0)
        self.randaugment_m = min(29, max(1, round(randaugment_magnitude * 3)))  # timm 0..10 -> kornia 0..30
        self.trivialaugment = trivialaugment
        self.random_erasing = float(random_erasing)
        self.groups = max(1, int(groups))
        self.rrc_ratio = tuple(rrc_ratio)
        self.pad_mode = pad_mode
        self.flip = K.RandomHorizontalFlip(p=0.5) if hflip else None
        self.erase = (
            K.RandomErasing(p=self.random_erasing, value=float(erasing_value))
            if self.random_erasing > 0
            else None
        )
        self._policies = nn.ModuleDict()  # kornia policy per channel count, built on first use
        # kornia RandomResizedCrop / RandomCrop per output size, built on first use
        self._crops = nn.ModuleDict()

    def _policy(self, channels: int) -> nn.Module | None:
        if not (self.randaugment_n or self.trivialaugment):
            return None
        key = str(channels)
        if key not in self._policies:
            from kornia.augmentation.auto import RandAugment, TrivialAugment

            if self.randaugment_n:
                policy = [p for p in _RANDAUGMENT_POLICY if channels == 3 or p[0][0] != "color"]
                self._policies[key] = RandAugment(n=self.randaugment_n, m=self.randaugment_m, policy=policy)
            else:
                self._policies[key] = TrivialAugment()
        return self._policies[key]

    def _crop(self, size: tuple[int, int]) -> nn.Module | None:
        """The random crop to ``size``: resized (RRC), or a window of the padded image (pad-crop), or None."""
        if self.rrc_scale is None and not self.pad_crop:
            return None
        key = f"{size[0]}x{size[1]}"
        if key not in self._crops:
            import kornia.augmentation as K

            self._crops[key] = (
                K.RandomResizedCrop(size, scale=self.rrc_scale, ratio=self.rrc_ratio, align_corners=False)
                if self.rrc_scale is not None
                else K.RandomCrop(size, padding=self.pad_crop, padding_mode=self.pad_mode)
            )
        return self._crops[key]

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        out = self.image_size or (x.shape[-2], x.shape[-1])
        if self.rrc_scale is None:
            x = resize_batch(x, out)
        crop = self._crop(out)
        if crop is not None:
            x = crop(x)
        if self.flip is not None:
            x = self.flip(x)
        policy = self._policy(x.shape[1])
        if policy is not None:
            x = torch.cat([policy(c) for c in x.chunk(self.groups)]) if self.groups > 1 else policy(x)
        if self.erase is not None:
            x = self.erase(x)
        return x.clamp(0, 1)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, rrc_scale={self.rrc_scale}, pad_crop={self.pad_crop}, hflip={self.hflip}, "
            f"randaugment={self.randaugment_n}(m={self.randaugment_m}/30), trivialaugment={self.trivialaugment}, "
            f"random_erasing={self.random_erasing}, groups={self.groups}"
        )


def build_train_augment(
    image_size: Size | None,
    *,
    rrc_scale: tuple[float, float] | None = (0.08, 1.0),
    hflip: bool = True,
    randaugment: int | None = None,
    trivialaugment: bool = False,
    random_erasing: float = 0.0,
    padding_crop: int | None = None,
    pad_crop: int | None = None,
    **kw,
) -> TrainAugment:
    """Training augmentation for float (B, C, H, W) batches in [0, 1] -> (B, C, *image_size).

    Args:
        image_size: output (H, W) (int for square); None keeps the input size.
        rrc_scale: random-resized-crop area range, or None for no RRC.
        hflip: random horizontal flips (p=0.5).
        randaugment: number of RandAugment ops per image (``randaugment_magnitude`` in timm's 0-10 units,
            default 9), or None. Shear/translate ranges follow timm (kornia's defaults shear ~3x harder).
        trivialaugment: kornia's TrivialAugment instead of RandAugment.
        random_erasing: probability of erasing a random rectangle (filled with ``erasing_value``, default 0).
        padding_crop / pad_crop: pad by this many pixels and random-crop back (CIFAR style). It replaces the
            default RRC; with a non-default ``rrc_scale`` too it is an error. 0/None disables.
        **kw: ``rrc_ratio``, ``randaugment_magnitude``, ``pad_mode``, ``erasing_value``, ``groups``.
    """
    if padding_crop and pad_crop and padding_crop != pad_crop:
        raise ValueError(f"padding_crop={padding_crop} and pad_crop={pad_crop} disagree")
    pad = padding_crop or pad_crop
    if pad and rrc_scale is not None and tuple(rrc_scale) == (0.08, 1.0):
        rrc_scale = None  # the default RRC gives way to an explicitly requested pad-crop
    return TrainAugment(
        image_size,
        rrc_scale=rrc_scale,
        hflip=hflip,
        randaugment=randaugment,
        trivialaugment=trivialaugment,
        random_erasing=random_erasing,
        pad_crop=pad,
        **kw,
    )


class Resize(nn.Module):
    """:func:`resize_batch` as a module (antialiased bilinear)."""

    def __init__(self, size: Size) -> None:
        super().__init__()
        self.size = _pair(size)

    def forward(self, x: Tensor) -> Tensor:
        return resize_batch(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def build_eval_transform(image_size: Size | None) -> nn.Module:
    """Evaluation preprocessing: resize to ``image_size``, or identity when None."""
    return Resize(image_size) if image_size is not None else nn.Identity()
