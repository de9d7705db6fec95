"""Image to patch tokens with one strided convolution."""

from __future__ import annotations

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
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.strict_img_size = strict_img_size
        self.flatten = flatten
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias
        )
        self.set_img_size(img_size)

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
        x = self.proj(x)  # B, D, H/p, W/p
        if self.flatten:
            return x.flatten(2).transpose(1, 2)  # B, N, D
        return x.permute(0, 2, 3, 1)  # B, H/p, W/p, D
