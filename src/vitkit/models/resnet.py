"""A small ResNet (He et al. 2016): the convolutional teacher of DeiT-style distillation.

Basic residual blocks (two 3x3 convs + BatchNorm, identity or 1x1 projection shortcut) in stages that halve the
resolution and widen the channels, then global average pooling and a linear head. Sized for small images
(MNIST-like 28x28, CIFAR 32x32): a 3x3 stem, no max-pool. Trained like any vitkit model (``vitkit train
--model resnet_mnist``) and saved/loaded with ``vitkit.save`` / ``vitkit.load``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.drop import DropPath
from ..registry import register_family
from ._checks import check_args
from ._head import new_head

__all__ = ["ResNet", "BasicBlock"]


class BasicBlock(nn.Module):
    def __init__(self, in_chans: int, out_chans: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_chans, out_chans, 1, stride, bias=False), nn.BatchNorm2d(out_chans))
            if stride != 1 or in_chans != out_chans
            else nn.Identity()
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(self.shortcut(x) + self.drop_path(out))


class ResNet(nn.Module):
    """ResNet for small images: ``widths[i]`` channels and ``depths[i]`` blocks in stage i (stride 2 after the
    first stage)."""

    def __init__(
        self,
        img_size: int | Sequence[int] = 32,
        in_chans: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        depths: Sequence[int] = (2, 2, 2),
        stem_channels: int = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(
                f"widths {list(widths)} and depths {list(depths)} must be non-empty and of equal length"
            )
        sizes = [img_size] if isinstance(img_size, (int, float)) else list(img_size)
        check_args(
            "ResNet",
            positive={"in_chans": in_chans, "stem_channels": stem_channels,
                      **{f"widths[{i}]": w for i, w in enumerate(widths)},
                      **{f"img_size[{i}]": s for i, s in enumerate(sizes)}},
            nonnegative={"num_classes": num_classes, **{f"depths[{i}]": d for i, d in enumerate(depths)}},
            rates={"drop_rate": drop_rate, "drop_path_rate": drop_path_rate},
            integers=("in_chans", "stem_channels", "widths", "img_size", "num_classes", "depths"),
        )  # fmt: skip
        size = [int(img_size)] * 2 if isinstance(img_size, int) else [int(s) for s in img_size]
        self.config: dict[str, Any] = {
            "img_size": size, "in_chans": in_chans, "num_classes": num_classes, "widths": [int(w) for w in widths],
            "depths": [int(d) for d in depths], "stem_channels": stem_channels, "drop_rate": drop_rate,
            "drop_path_rate": drop_path_rate,
        }  # fmt: skip
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # (also on meta)
        stages, chans, k = [], stem_channels, 0
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(
                    BasicBlock(chans, width, stride=2 if (i > 0 and j == 0) else 1, drop_path=rates[k])
                )
                chans, k = width, k + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.num_features = chans
        self.head = nn.Linear(chans, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.head_drop(self.forward_features(x).mean((2, 3))))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new head for ``num_classes`` classes (0: pooled features), on the model's device and in its dtype."""
        head = new_head(self, self.head.in_features if isinstance(self.head, nn.Linear) else self.num_features,
                        num_classes)  # fmt: skip
        self.num_classes = self.config["num_classes"] = num_classes
        self.head = head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        raise NotImplementedError("gradient checkpointing is not implemented for ResNet (it is small)")


register_family("resnet", ResNet)
