"""Image-text contrastive losses: CLIP's symmetric InfoNCE (Radford et al. 2021) and SigLIP's pairwise sigmoid loss
(Zhai et al. 2023), with the negatives of every rank under torchrun.

Both take unit-length embeddings ``(B, D)`` (what :meth:`vitkit.models.clip.CLIP.forward` returns), the temperature
as a multiplier (``exp(logit_scale)``) and, for SigLIP, the bias. Under an initialised process group with ``gather``,
each rank's embeddings are all-gathered with a gradient-correct all-gather (``torch.distributed.nn.functional``):
the contrastive batch is the global batch. Each rank then scores its own images (and, for CLIP, its own texts)
against everything (open_clip's ``local_loss``), so the value returned is this rank's share: the mean over ranks,
which DDP's gradient averaging takes, is the loss of the whole global batch on one process, gradients included.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["clip_loss", "siglip_loss", "gather_features"]


def gather_features(x: Tensor) -> tuple[Tensor, int]:
    """This rank's (B, D) -> every rank's (world * B, D) in rank order, and this rank's index.

    The gradient reaches every rank's share (each rank's loss sees all of it). Without an initialised process group,
    or with one process: ``(x, 0)``.

    Raises:
        ValueError: ranks with different local batch sizes (the contrastive labels assume equal shares).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"the gathered contrastive loss needs the same batch on every rank, got local batches of {sizes}: "
            "drop the last incomplete batch (drop_last=True)"
        )
    return torch.cat(all_gather(x.contiguous()), dim=0), dist.get_rank()


def _check(image_embeds: Tensor, text_embeds: Tensor, loss: str) -> None:
    if image_embeds.dim() != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"{loss}: image_embeds and text_embeds must both be (batch, dim) for matching pairs, got "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )


def clip_loss(
    image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float, gather: bool = True
) -> Tensor:
    """CLIP's symmetric InfoNCE: the mean of the image->text and text->image cross-entropies of the (B, B) logits
    ``logit_scale * image_embeds @ text_embeds.T``, whose targets are the diagonal (the i-th image goes with the i-th
    text).

    Args:
        image_embeds, text_embeds: (B, D) unit-length embeddings of B matching pairs.
        logit_scale: the temperature's multiplier (``exp`` of the learned log scale; CLIP starts at 1/0.07).
        gather: under torchrun, contrast against every rank's pairs (see the module docstring).

    Returns:
        A scalar (float32, computed outside autocast): this rank's share of the global-batch loss.
    """
    _check(image_embeds, text_embeds, "clip_loss")
    img, txt = image_embeds.float(), text_embeds.float()
    all_img, rank = gather_features(img) if gather else (img, 0)
    all_txt, _ = gather_features(txt) if gather else (txt, 0)
    labels = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
    with torch.autocast(
        img.device.type, enabled=False
    ):  # float32 logits: a scale of 100 magnifies bf16's error
        per_image = logit_scale * img @ all_txt.T
        per_text = logit_scale * txt @ all_img.T
        return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2


def siglip_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float,
    gather: bool = True,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss: every (image, text) pair is a binary problem, positive on the diagonal,
    ``-sum log sigmoid(z_ij * (logit_scale * x_i . y_j + logit_bias)) / B`` with z = +1 for matching pairs and -1
    otherwise (the sum over all B x B pairs divided by the batch, as big_vision and HuggingFace's ``SiglipModel``).

    Args:
        image_embeds, text_embeds: (B, D) unit-length embeddings of B matching pairs.
        logit_scale: the temperature's multiplier (SigLIP starts at 10); logit_bias: the learned bias (starts at -10).
        gather: under torchrun, this rank's images against every rank's texts (see the module docstring).

    Returns:
        A scalar (float32): this rank's share of the global-batch loss.
    """
    _check(image_embeds, text_embeds, "siglip_loss")
    img, txt = image_embeds.float(), text_embeds.float()
    all_txt, rank = gather_features(txt) if gather else (txt, 0)
    B = img.shape[0]
    with torch.autocast(img.device.type, enabled=False):  # float32 logits, as clip_loss
        logits = logit_scale * img @ all_txt.T + logit_bias  # (B, world * B)
        labels = -torch.ones_like(logits)
        rows = torch.arange(B, device=img.device)
        labels[rows, rows + rank * B] = 1.0
        return -F.logsigmoid(labels * logits).sum() / B
