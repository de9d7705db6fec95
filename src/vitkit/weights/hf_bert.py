"""HuggingFace BERT weights (``BertModel``, ``BertForSequenceClassification``, MiniLM) -> vitkit's
:class:`~vitkit.models.bert.BertEncoder`, bit for bit.

The encoder class is looked up in the model registry (family ``"bert"``), so this module sits above the models and
:mod:`vitkit.models.bert` never has to import the weights package to define its architecture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..registry import get_family
from .convert import convert_hf_bert
from .pretrained import load_pretrained

__all__ = ["convert_hf_bert", "bert_config_from_hf", "bert_from_huggingface"]


def bert_config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """A HuggingFace ``config.json`` (BERT) -> :class:`~vitkit.models.bert.BertEncoder` arguments."""
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"not a BERT config: model_type={hf.get('model_type')!r}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"only absolute position embeddings are supported, got {hf['position_embedding_type']!r}"
        )
    act = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}.get(
        hf.get("hidden_act", "gelu")
    )
    if act is None:
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}")
    return {
        "vocab_size": hf["vocab_size"], "embed_dim": hf["hidden_size"], "depth": hf["num_hidden_layers"],
        "num_heads": hf["num_attention_heads"], "mlp_dim": hf["intermediate_size"],
        "max_len": hf.get("max_position_embeddings", 512), "type_vocab_size": hf.get("type_vocab_size", 2),
        "pad_token_id": hf.get("pad_token_id", 0) or 0, "drop_rate": hf.get("hidden_dropout_prob", 0.1),
        "attn_drop_rate": hf.get("attention_probs_dropout_prob", 0.1), "norm_eps": hf.get("layer_norm_eps", 1e-12),
        "act_layer": act,
    }  # fmt: skip


def bert_from_huggingface(path: str | os.PathLike, num_classes: int = 0) -> nn.Module:
    """A :class:`~vitkit.models.bert.BertEncoder` from a local HuggingFace BERT folder (``config.json`` + safetensors/bin weights).

    The encoder and pooler load bit for bit (every key checked by name); the file's heads (a classifier,
    pre-training's ``cls.*``) are dropped and ``num_classes > 0`` adds a new classifier."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a HuggingFace model folder (no config.json)")
    hf_config = json.loads((path / "config.json").read_text())
    model = get_family("bert")(**bert_config_from_hf(hf_config), num_classes=num_classes)
    load_pretrained(model, path, ignore_head=True)
    return model
