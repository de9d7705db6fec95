"""Masked autoencoder (He et al. 2022): self-supervised pre-training of a ViT encoder.

Read top to bottom: image -> patch tokens + positions -> keep a random ``1 - mask_ratio`` of them -> ViT encoder
(on the kept tokens only, so pre-training is cheap) -> light decoder over all positions (mask tokens fill the
gaps) -> predicted pixels per patch; the loss is the mean squared error on the *masked* patches only, against
per-patch normalised pixels (``norm_pix_loss``). No labels are used. The encoder is an ordinary
:class:`~vitkit.models.vit.VisionTransformer` from the registry; after pre-training it is saved on its own and
fine-tuned like any other (``vitkit finetune --from RUN``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..layers import EncoderBlock, sincos_2d
from ..registry import register_family
from ._checks import check_args
from .vit import build_backbone

__all__ = ["MaskedAutoencoder", "random_masking", "patchify", "unpatchify"]


def random_masking(
    x: Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep ``int(N * (1 - mask_ratio))`` random tokens per sample of ``x`` (B, N, D).

    Returns (kept tokens (B, keep, D), mask (B, N) with 1 = masked, ids_restore (B, N)) where
    ``ids_restore`` puts [kept, masked] back into the original order.
    """
    B, N, D = x.shape
    keep = int(N * (1 - mask_ratio))
    if not 0 <= mask_ratio < 1 or keep < 1:
        raise ValueError(
            f"mask_ratio must be in [0, 1) and keep at least one of {N} patches, got {mask_ratio}"
        )
    noise = torch.rand(B, N, device=x.device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = x.gather(1, ids_keep[..., None].expand(-1, -1, D))
    mask = torch.ones(B, N, device=x.device)
    mask[:, :keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


def patchify(images: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) -> (B, N, ph * pw * C), patches in the row-major order of the patch embedding's tokens."""
    B, C, H, W = images.shape
    ph, pw = patch_size
    x = images.reshape(B, C, H // ph, ph, W // pw, pw)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // ph) * (W // pw), ph * pw * C)


def unpatchify(patches: Tensor, patch_size: tuple[int, int], grid: tuple[int, int], channels: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, ph * pw * C) -> (B, C, H, W)."""
    B = patches.shape[0]
    (ph, pw), (gh, gw) = patch_size, grid
    x = patches.reshape(B, gh, gw, ph, pw, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, gh * ph, gw * pw)


def _patch_stats(patches: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patch mean and (unbiased, as MAE) variance; a patch of one value has variance 0, not NaN."""
    mean = patches.mean(dim=-1, keepdim=True)
    if patches.shape[-1] < 2:
        return mean, torch.zeros_like(mean)
    return mean, patches.var(dim=-1, keepdim=True)


class MaskedAutoencoder(nn.Module):
    """A registry ViT encoder plus MAE's lightweight decoder.

    Args:
        encoder: registry name of the encoder (a ``vit`` family model); ``encoder_args`` override its config.
        in_chans, drop_path_rate: passed to the encoder (``None`` keeps the registry's value).
        mask_ratio: fraction of patches hidden from the encoder (MAE's default 0.75), in [0, 1); with 0 no patch
            is hidden and the loss is the reconstruction error over all patches.
        decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio: decoder shape (narrow and shallow).
        norm_pix_loss: regress per-patch normalised pixels (mean 0, variance 1 within each patch), as MAE.

    ``forward(images) -> (loss, pred, mask)``: the scalar loss, per-patch predictions (B, N, ph * pw * C) and the
    mask (B, N; 1 = masked).
    """

    def __init__(
        self,
        encoder: str = "vit_mnist",
        encoder_args: dict[str, Any] | None = None,
        in_chans: int | None = None,
        drop_path_rate: float | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        decoder_mlp_ratio: float = 2.0,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.encoder, encoder_args = build_backbone(
            encoder, encoder_args, "MAE encoder", in_chans=in_chans, drop_path_rate=drop_path_rate
        )
        self.config: dict[str, Any] = {
            "encoder": encoder, "encoder_args": encoder_args, "mask_ratio": mask_ratio,
            "decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads,
            "decoder_mlp_ratio": decoder_mlp_ratio, "norm_pix_loss": norm_pix_loss,
        }  # fmt: skip
        if self.encoder.dynamic_img_size:
            raise ValueError("the MAE encoder needs a fixed image size (dynamic_img_size=False)")
        check_args(
            "MaskedAutoencoder",
            positive={"decoder_dim": decoder_dim, "decoder_heads": decoder_heads,
                      "decoder_mlp_ratio": decoder_mlp_ratio},
            nonnegative={"decoder_depth": decoder_depth},
            rates={"mask_ratio": mask_ratio},
            integers=("decoder_dim", "decoder_heads", "decoder_depth"),
            divisible=(("decoder_dim", decoder_dim, "decoder_heads", decoder_heads),),
        )  # fmt: skip
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        embed = self.encoder.patch_embed
        if int(embed.num_patches * (1 - mask_ratio)) < 1:
            raise ValueError(
                f"MaskedAutoencoder: mask_ratio={mask_ratio} hides all {embed.num_patches} patches; the encoder "
                "needs at least one"
            )
        self.patch_size, self.grid_size = tuple(embed.patch_size), tuple(embed.grid_size)
        self.in_chans = embed.in_chans
        # Encoder tokens are normalised before the decoder: by ``norm`` (class-token models) or, for mean-pooled
        # models whose ``norm`` is the identity, by ``fc_norm`` applied per token (fine-tuning starts from it).
        self.encoder_norm = self.encoder.norm if isinstance(self.encoder.norm, nn.LayerNorm) else None
        self._build_decoder(decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio)

    def _build_decoder(
        self, decoder_dim: int, decoder_depth: int, decoder_heads: int, mlp_ratio: float
    ) -> None:
        """MAE's decoder: embedding, mask token, fixed sin-cos positions, blocks, norm and pixel prediction,
        initialised as MAE (xavier-uniform linears, zero biases, normal(0.02) mask token)."""
        dim = self.encoder.embed_dim
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_2d(self.grid_size, decoder_dim)[None], persistent=False
        )
        self.decoder_blocks = nn.Sequential(*[
            EncoderBlock(decoder_dim, decoder_heads, mlp_ratio=mlp_ratio) for _ in range(decoder_depth)
        ])  # fmt: skip
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size[0] * self.patch_size[1] * self.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    # ---------------------------------------------------------------- encoder on the visible patches
    def forward_encoder(
        self, images: Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Images -> (encoded prefix + kept tokens (B, P + keep, D), mask (B, N), ids_restore (B, N))."""
        enc = self.encoder
        x = enc.patch_embed(images)
        prefix_pos = None
        if (
            enc.pos_embed is not None
        ):  # positions are added before masking: kept tokens remember where they were
            if enc.no_embed_class:
                x = x + enc.pos_embed
            else:
                prefix_pos, x = (
                    enc.pos_embed[:, : enc.num_prefix_tokens],
                    x + enc.pos_embed[:, enc.num_prefix_tokens :],
                )
        x, mask, ids_restore = random_masking(
            x, self.mask_ratio if mask_ratio is None else mask_ratio, generator
        )
        prefix = enc.prefix_tokens(x.shape[0])
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            x = torch.cat([prefix if prefix_pos is None else prefix + prefix_pos, x], dim=1)
        x = enc.norm_pre(enc.pos_drop(x))
        for block in enc.blocks:
            x = enc._run_block(block, x)
        x = self.encoder_norm(x) if self.encoder_norm is not None else enc.fc_norm(x)
        return x, mask, ids_restore

    # ---------------------------------------------------------------- decoder over all positions
    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Encoded tokens -> predicted pixels of every patch (B, N, ph * pw * C)."""
        P = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)
        prefix, visible = x[:, :P], x[:, P:]
        B, N, D = visible.shape[0], ids_restore.shape[1], x.shape[-1]
        filler = self.mask_token.expand(B, N - visible.shape[1], D)
        x = torch.cat([visible, filler], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, D))
        x = torch.cat([prefix, x + self.decoder_pos_embed], dim=1)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, P:])

    def target(self, images: Tensor) -> Tensor:
        """What the decoder regresses: patch pixels, normalised per patch when ``norm_pix_loss``."""
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean, var = _patch_stats(target)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the masked patches; over all patches when none is masked (``mask_ratio=0``:
        plain reconstruction, a finite loss instead of 0/0)."""
        per_patch = (pred.float() - self.target(images).float()).pow(2).mean(dim=-1)
        weight = torch.where(mask.sum() > 0, mask.float(), torch.ones_like(per_patch))
        return (per_patch * weight).sum() / weight.sum()

    def forward(
        self, images: Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        latent, mask, ids_restore = self.forward_encoder(images, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(images, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, images: Tensor, pred: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(masked input, reconstruction) images: visible patches kept, masked ones predicted.

        With ``norm_pix_loss`` the predictions are mapped back with each patch's true mean and variance (as MAE's
        visualisation does), so only the masked patches' *structure* is predicted.
        """
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean, var = _patch_stats(target)
            pred = pred * (var + 1e-6).sqrt() + mean
        m = mask[..., None]
        shape = (self.patch_size, self.grid_size, self.in_chans)
        masked = unpatchify(target * (1 - m), *shape)
        recon = unpatchify(target * (1 - m) + pred * m, *shape)
        return masked, recon


register_family("mae", MaskedAutoencoder)
