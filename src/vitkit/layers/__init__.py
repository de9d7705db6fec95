"""Reusable Transformer building blocks (attention, MLP, patch/position embeddings, blocks)."""

from .attention import Attention, CrossAttention, may_inspect_values, merge_masks, scaled_dot_product
from .blocks import Block, DecoderBlock, EncoderBlock
from .drop import DropPath, LayerScale, drop_path
from .mlp import Mlp, QuickGELU, get_act_layer
from .patch_embed import PatchEmbed, to_2tuple
from .pool import AttentionPoolLatent
from .pos_embed import resample_abs_pos_embed, sincos_1d, sincos_2d, sincos_2d_points
from .token_embed import TokenEmbedding

__all__ = [
    "Attention",
    "CrossAttention",
    "may_inspect_values",
    "merge_masks",
    "scaled_dot_product",
    "Block",
    "DecoderBlock",
    "EncoderBlock",
    "DropPath",
    "LayerScale",
    "drop_path",
    "Mlp",
    "QuickGELU",
    "AttentionPoolLatent",
    "get_act_layer",
    "PatchEmbed",
    "to_2tuple",
    "resample_abs_pos_embed",
    "sincos_1d",
    "sincos_2d",
    "sincos_2d_points",
    "TokenEmbedding",
]
