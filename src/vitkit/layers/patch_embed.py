"""Image to patch tokens: one strided convolution, or a small convolutional stem then a projection."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["PatchEmbed", "to_2tuple"]


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, D) tokens, N = (H/p)*(W/p); ``flatten=False`` keeps (B, H/p, W/p, D).

    With ``strict_img_size`` the input must match ``img_size``; otherwise any size divisible by the patch works.

    ``stem_channels`` (e.g. ``(32, 64)``) puts a convolutional stem before the projection, as in Xiao et al.,
    "Early Convolutions Help Transformers See Better" (2021): each stage is a 3x3 convolution + BatchNorm + ReLU,
    with stride 2 while the patch size still allows it (or the strides given in ``stem_strides``, e.g.
    ``(1, 2, 2)`` to keep a full-resolution first stage), and ``proj`` then covers the remaining factor
    (a 1x1 convolution when the stem has already reduced by the whole patch size). Tokens and grid are
    the same as without the stem.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        bias: bool = True,
        strict_img_size: bool = True,
        flatten: bool = True,
        stem_channels: Sequence[int] = (),
        stem_strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.strict_img_size = strict_img_size
        self.flatten = flatten
        self.stem, channels, remaining = self._build_stem(in_chans, stem_channels, stem_strides)
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=remaining, stride=remaining, bias=bias)
        self.set_img_size(img_size)

    def _build_stem(
        self, in_chans: int, stem_channels: Sequence[int], stem_strides: Sequence[int] | None
    ) -> tuple[nn.Module | None, int, tuple[int, int]]:
        """The conv stem (or None), its output channels and the patch factor left for ``proj``."""
        if stem_strides is not None and not stem_channels:
            raise ValueError("stem_strides needs stem_channels")
        if not stem_channels:
            return None, in_chans, self.patch_size
        if stem_strides is not None and len(stem_strides) != len(stem_channels):
            raise ValueError(
                f"stem_strides {list(stem_strides)} must give one stride per stem stage {list(stem_channels)}"
            )
        layers: list[nn.Module] = []
        rh, rw = self.patch_size
        c = in_chans
        for i, out in enumerate(stem_channels):
            if stem_strides is None:
                sh, sw = (2 if rh % 2 == 0 else 1), (2 if rw % 2 == 0 else 1)
            else:
                sh = sw = int(stem_strides[i])
                if sh < 1 or rh % sh or rw % sw:
                    raise ValueError(
                        f"stem_strides {list(stem_strides)} do not divide the patch size {self.patch_size}"
                    )
            layers += [
                nn.Conv2d(c, int(out), 3, stride=(sh, sw), padding=1, bias=False),
                nn.BatchNorm2d(int(out)),
                nn.ReLU(inplace=True),
            ]
            rh, rw, c = rh // sh, rw // sw, int(out)
        return nn.Sequential(*layers), c, (rh, rw)

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        img_size = to_2tuple(img_size)
        self._check_divisible(img_size)
        self.img_size = img_size
        self.grid_size = (img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def _check_divisible(self, hw: tuple[int, int]) -> None:
        if hw[0] % self.patch_size[0] or hw[1] % self.patch_size[1]:
            raise ValueError(
                f"image size {hw[0]}x{hw[1]} is not divisible by the patch size "
                f"{self.patch_size[0]}x{self.patch_size[1]}"
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"expected images of shape (batch, channels, height, width), got {tuple(x.shape)}"
            )
        _, C, H, W = x.shape
        if C != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels, got {C} (input shape {tuple(x.shape)})"
            )
        if self.strict_img_size:
            if (H, W) != self.img_size:
                raise ValueError(
                    f"input image size {H}x{W} does not match the model's {self.img_size[0]}x{self.img_size[1]}; "
                    "resize the input, call model.set_input_size(), or build with dynamic_img_size=True"
                )
        else:
            self._check_divisible((H, W))
        if self.stem is not None:
            x = self.stem(x)  # B, C', H/s, W/s
        x = self.proj(x)  # B, D, H/p, W/p
        if self.flatten:
            return x.flatten(2).transpose(1, 2)  # B, N, D
        return x.permute(0, 2, 3, 1)  # B, H/p, W/p, D
