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

import torch
from torch import Tensor, nn

from ..registry import get_family
from .convert import check_state_dict, unwrap_state_dict
from .files import read_checkpoint

__all__ = ["convert_hf_bert", "bert_config_from_hf", "bert_from_huggingface"]

_HF_EMBED = {
    "embeddings.word_embeddings.": "embeddings.word.",
    "embeddings.position_embeddings.": "embeddings.position.",
    "embeddings.token_type_embeddings.": "embeddings.token_type.",
    "embeddings.LayerNorm.": "embeddings.norm.",
    "pooler.dense.": "pooler.",
    "classifier.": "head.",
}
_HF_BLOCK = {
    "attention.output.dense.": "attn.proj.",
    "attention.output.LayerNorm.": "norm1.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "output.LayerNorm.": "norm2.",
}


def convert_hf_bert(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HuggingFace ``BertModel`` / ``BertForSequenceClassification`` state dict -> :class:`~vitkit.models.bert.BertEncoder` names.

    The separate query/key/value projections are concatenated into the fused ``qkv`` layer; ``bert.`` prefixes and
    the ``position_ids`` buffer are dropped. Keys it does not know are kept as they are (the key check names them).
    """

    state = unwrap_state_dict(state)  # training checkpoints, DDP / FSDP / torch.compile prefixes
    state = {(k[5:] if k.startswith("bert.") else k): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("encoder.layer."):
            parts = key.split(".")
            i, rest = int(parts[2]), ".".join(parts[3:])
            if rest.startswith("attention.self."):
                proj, kind = parts[5], parts[6]  # query|key|value, weight|bias
                qkv.setdefault((i, kind), {})[proj] = value
                continue
            for old, new in _HF_BLOCK.items():
                if rest.startswith(old):
                    out[f"blocks.{i}.{new}{rest[len(old) :]}"] = value
                    break
            else:
                out[key] = value
            continue
        for old, new in _HF_EMBED.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            out[key] = value
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            out.update({f"encoder.layer.{i}.attention.self.{p}.{kind}": v for p, v in parts.items()})
            continue
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


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

    The encoder and pooler load bit for bit (every key checked by name); ``num_classes > 0`` adds a new classifier.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a HuggingFace model folder (no config.json)")
    hf_config = json.loads((path / "config.json").read_text())
    model = get_family("bert")(**bert_config_from_hf(hf_config), num_classes=num_classes)
    raw, _ = read_checkpoint(path)
    state = convert_hf_bert(raw)
    state.pop("head.weight", None), state.pop("head.bias", None)
    if num_classes > 0:
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state)
    return model
