"""Image-text contrastive losses: CLIP's symmetric InfoNCE (Radford et al. 2021) and SigLIP's pairwise sigmoid loss
(Zhai et al. 2023), with the negatives of every rank under torchrun.

Both take unit-length embeddings ``(B, D)`` (what :meth:`vitkit.models.clip.CLIP.forward` returns), the temperature
as a multiplier (``exp(logit_scale)``) and, for SigLIP, the bias. Under an initialised process group with ``gather``,
each rank's embeddings are all-gathered with a gradient-correct all-gather (``torch.distributed.nn.functional``):
the contrastive batch is the global batch. Each rank then scores its own images (and, for CLIP, its own texts)
against everything (open_clip's ``local_loss``), so the value returned is this rank's share: the mean over ranks,
which DDP's gradient averaging takes, is the loss of the whole global batch on one process, gradients included.

Repeated captions (class captions, "a photo of a cat." twice in one batch) are not negatives of each other's
images: with ``caption_ids`` (B,), image i and text j are a positive pair whenever their ids are equal. InfoNCE then
spreads its target evenly over each row's (and column's) positives (UniCL, Yang et al. 2022) and SigLIP labels every
positive +1; with all ids distinct both are exactly the plain losses.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["clip_loss", "siglip_loss", "gather_features", "positive_pairs"]


def gather_features(x: Tensor) -> tuple[Tensor, int]:
    """This rank's (B, D) -> every rank's (world * B, D) in rank order, and this rank's index.

    The gradient reaches every rank's share (each rank's loss sees all of it). Without an initialised process group,
    or with one process: ``(x, 0)``.

    Raises:
        ValueError: ranks with different local batch sizes (the contrastive labels assume equal shares).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed._functional_collectives import all_gather_single_autograd

    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"the gathered contrastive loss needs the same batch on every rank, got local batches of {sizes}: "
            "drop the last incomplete batch (drop_last=True)"
        )
    # PyTorch's autograd all-gather (what torch.distributed.nn.functional.all_gather, now deprecated, points to):
    # the backward sums every rank's gradient for this rank's share
    gathered = all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)
    return gathered.wait() if hasattr(gathered, "wait") else gathered, dist.get_rank()


def _gather_ids(ids: Tensor) -> Tensor:
    """Every rank's caption ids (B,) -> (world * B,) in rank order (no gradient: ids are labels)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    shares = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(shares, ids.contiguous())
    return torch.cat(shares)


def positive_pairs(caption_ids: Tensor, all_ids: Tensor) -> Tensor | None:
    """(B, B') bool: local pair i and gathered pair j share a caption id; None when every row's only positive is its
    own pair (all ids distinct): the plain diagonal targets then apply."""
    positive = caption_ids[:, None] == all_ids[None, :]
    return None if bool((positive.sum(dim=1) == 1).all()) else positive


def _soft_cross_entropy(logits: Tensor, positive: Tensor) -> Tensor:
    """Cross-entropy against targets spread evenly over each row's positives (UniCL)."""
    target = positive.float() / positive.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=-1)).sum(dim=1).mean()


def _check(image_embeds: Tensor, text_embeds: Tensor, loss: str, caption_ids: Tensor | None) -> None:
    if image_embeds.dim() != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"{loss}: image_embeds and text_embeds must both be (batch, dim) for matching pairs, got "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    if caption_ids is not None and tuple(caption_ids.shape) != (image_embeds.shape[0],):
        raise ValueError(
            f"{loss}: caption_ids must be one id per pair, shape ({image_embeds.shape[0]},), got "
            f"{tuple(caption_ids.shape)}"
        )


def clip_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    gather: bool = True,
    caption_ids: Tensor | None = None,
) -> Tensor:
    """CLIP's symmetric InfoNCE: the mean of the image->text and text->image cross-entropies of the (B, B) logits
    ``logit_scale * image_embeds @ text_embeds.T``, whose targets are the diagonal (the i-th image goes with the i-th
    text).

    Args:
        image_embeds, text_embeds: (B, D) unit-length embeddings of B matching pairs.
        logit_scale: the temperature's multiplier (``exp`` of the learned log scale; CLIP starts at 1/0.07).
        gather: under torchrun, contrast against every rank's pairs (see the module docstring).
        caption_ids: (B,) integer ids, equal for pairs whose captions count as the same: each row's (and column's)
            target is then spread evenly over its positives (UniCL). None, or all ids distinct: the diagonal.

    Returns:
        A scalar (float32, computed outside autocast): this rank's share of the global-batch loss.
    """
    _check(image_embeds, text_embeds, "clip_loss", caption_ids)
    img, txt = image_embeds.float(), text_embeds.float()
    all_img, rank = gather_features(img) if gather else (img, 0)
    all_txt, _ = gather_features(txt) if gather else (txt, 0)
    positive = None
    if caption_ids is not None:
        positive = positive_pairs(caption_ids, _gather_ids(caption_ids) if gather else caption_ids)
    labels = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
    with torch.autocast(
        img.device.type, enabled=False
    ):  # float32 logits: a scale of 100 magnifies bf16's error
        per_image = logit_scale * img @ all_txt.T
        per_text = logit_scale * txt @ all_img.T
        if positive is not None:  # pair i's image and text carry the same id: one mask serves both directions
            return (_soft_cross_entropy(per_image, positive) + _soft_cross_entropy(per_text, positive)) / 2
        return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2


def siglip_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float,
    gather: bool = True,
    caption_ids: Tensor | None = None,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss: every (image, text) pair is a binary problem, positive on the diagonal,
    ``-sum log sigmoid(z_ij * (logit_scale * x_i . y_j + logit_bias)) / B`` with z = +1 for matching pairs and -1
    otherwise (the sum over all B x B pairs divided by the batch, as big_vision and HuggingFace's ``SiglipModel``).

    Args:
        image_embeds, text_embeds: (B, D) unit-length embeddings of B matching pairs.
        logit_scale: the temperature's multiplier (SigLIP starts at 10); logit_bias: the learned bias (starts at -10).
        gather: under torchrun, this rank's images against every rank's texts (see the module docstring).
        caption_ids: (B,) integer ids: z = +1 for every pair whose ids are equal (None: the diagonal only).

    Returns:
        A scalar (float32): this rank's share of the global-batch loss.
    """
    _check(image_embeds, text_embeds, "siglip_loss", caption_ids)
    img, txt = image_embeds.float(), text_embeds.float()
    all_txt, rank = gather_features(txt) if gather else (txt, 0)
    B = img.shape[0]
    with torch.autocast(img.device.type, enabled=False):  # float32 logits, as clip_loss
        logits = logit_scale * img @ all_txt.T + logit_bias  # (B, world * B)
        if caption_ids is not None:
            all_ids = _gather_ids(caption_ids) if gather else caption_ids
            labels = (caption_ids[:, None] == all_ids[None, :]).float() * 2 - 1
        else:
            labels = -torch.ones_like(logits)
            rows = torch.arange(B, device=img.device)
            labels[rows, rows + rank * B] = 1.0
        return -F.logsigmoid(labels * logits).sum() / B
