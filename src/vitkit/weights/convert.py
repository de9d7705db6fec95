"""Key remapping from timm, HuggingFace and JAX (.npz) ViT layouts to vitkit's (= timm's) names, and from
HuggingFace GPT-2 and BERT to vitkit's GPT and BERT encoder."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from .files import CheckpointError, strip_wrapper_prefixes

__all__ = [
    "detect_layout", "hf_to_vitkit", "jax_to_vitkit", "unwrap_state_dict", "strip_wrapper_prefixes",
    "check_state_dict",
    "convert_hf_gpt2",
    "is_hf_gpt2",
    "convert_hf_bert",
]  # fmt: skip

_CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")


def unwrap_state_dict(obj: dict[str, Any]) -> dict[str, Tensor]:
    """Take the tensors out of training checkpoints and strip the names wrappers add to their keys.

    Containers are entered, nested ones too: ``{'state_dict_ema' | 'model_ema' |
    'state_dict' | 'model' | 'module': ...}``, EMA weights first when a checkpoint has both. Keys lose the
    prefixes of DDP (``module.``), FSDP (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``) and
    ``torch.compile`` (``_orig_mod.``) wherever, and in whatever order, they were nested."""
    while (
        inner := next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
    ) is not None:
        obj = inner
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            continue
        name = strip_wrapper_prefixes(k)
        if name in out:
            raise CheckpointError(
                f"two tensors load into {name!r} once wrapper prefixes are removed (one is {k!r})"
            )
        out[name] = v
    return out


def detect_layout(state: dict[str, Tensor]) -> str:
    """'vitkit' (also timm), 'hf' or 'jax'; a clear error for anything else."""
    keys = list(state)
    if any(k.endswith("patch_embed.proj.weight") for k in keys):
        return "vitkit"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        return "hf"
    if any(k.endswith("embedding/kernel") for k in keys):
        return "jax"
    sample = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    raise CheckpointError(
        f"not a Vision Transformer checkpoint in any known layout (timm/vitkit, HuggingFace ViT/DeiT, JAX .npz): "
        f"no patch-embedding weight among its {len(keys)} keys ({sample})"
    )


_HF_BLOCK = {  # classic names (checkpoints on disk) and transformers>=5 in-memory names
    "layernorm_before": "norm1",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
_HF_DROPPED = ("embeddings.mask_token", "pooler.")


def hf_to_vitkit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HuggingFace ``ViT*`` / ``DeiT*`` state dict -> vitkit names (query/key/value fused into qkv)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        k = re.sub(r"^(vit|deit)\.", "", key)
        if k.startswith(_HF_DROPPED):
            continue
        head = k.split(".")[0]
        if head in _HF_HEADS:
            out[_HF_HEADS[head] + k[len(head) :]] = value
            continue
        if k in _HF_TOP:
            out[_HF_TOP[k]] = value
            continue
        m = re.match(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$", k)
        if not m:
            out[k] = value  # left for the key check to report
            continue
        i, name, kind = int(m.group(1)), m.group(2), m.group(3)
        qm = re.match(r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)$", name)
        if qm:
            part = qm.group(1) or {"q": "query", "k": "key", "v": "value"}[qm.group(2)]
            qkv.setdefault((i, kind), {})[part] = value
        elif name in _HF_BLOCK:
            out[f"blocks.{i}.{_HF_BLOCK[name]}.{kind}"] = value
        else:
            out[k] = value
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(
                f"layer {i} has only {sorted(parts)} attention {kind}s, not query/key/value"
            )
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


_JAX_BLOCK = [
    (r"LayerNorm_0/scale", "norm1.weight", None),
    (r"LayerNorm_0/bias", "norm1.bias", None),
    (r"LayerNorm_[12]/scale", "norm2.weight", None),
    (r"LayerNorm_[12]/bias", "norm2.bias", None),
    (r"MlpBlock_\d/Dense_0/kernel", "mlp.fc1.weight", "t"),
    (r"MlpBlock_\d/Dense_0/bias", "mlp.fc1.bias", None),
    (r"MlpBlock_\d/Dense_1/kernel", "mlp.fc2.weight", "t"),
    (r"MlpBlock_\d/Dense_1/bias", "mlp.fc2.bias", None),
    (r"MultiHeadDotProductAttention_\d/out/kernel", "attn.proj.weight", "out"),
    (r"MultiHeadDotProductAttention_\d/out/bias", "attn.proj.bias", None),
]


def jax_to_vitkit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Original Google ViT (vit_jax / big_vision) ``.npz`` arrays -> vitkit names and PyTorch layouts."""
    state = {re.sub(r"^(opt/target/|params/)", "", k): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, v in state.items():
        if key == "embedding/kernel":  # (ph, pw, C, D) -> (D, C, ph, pw)
            out["patch_embed.proj.weight"] = v.permute(3, 2, 0, 1)
        elif key == "embedding/bias":
            out["patch_embed.proj.bias"] = v
        elif key == "cls":
            out["cls_token"] = v
        elif key in ("Transformer/posembed_input/pos_embedding", "pos_embedding"):
            out["pos_embed"] = v
        elif key.startswith("Transformer/encoder_norm/"):
            out["norm." + ("weight" if key.endswith("scale") else "bias")] = v
        elif key == "head/kernel":
            out["head.weight"] = v.t()
        elif key == "head/bias":
            out["head.bias"] = v
        elif key.startswith("pre_logits/"):
            raise CheckpointError(
                "this JAX checkpoint has a pre-logits representation layer (an ImageNet-21k model); "
                "vitkit's ViT has none - use a fine-tuned checkpoint"
            )
        else:
            m = re.match(r"Transformer/encoderblock_(\d+)/(.+)$", key)
            if not m:
                out[key] = v
                continue
            i, name = int(m.group(1)), m.group(2)
            am = re.match(r"MultiHeadDotProductAttention_\d/(query|key|value)/(kernel|bias)$", name)
            if am:
                part, kind = am.groups()
                # kernel (D, H, hd) -> (H*hd, D); bias (H, hd) -> (H*hd,)
                t = v.reshape(v.shape[0], -1).t() if kind == "kernel" else v.reshape(-1)
                qkv.setdefault((i, "weight" if kind == "kernel" else "bias"), {})[part] = t
                continue
            for pattern, target, op in _JAX_BLOCK:
                if re.fullmatch(pattern, name):
                    if op == "t":
                        v = v.t()
                    elif op == "out":  # (H, hd, D) -> (D, H*hd)
                        v = v.reshape(-1, v.shape[-1]).t()
                    out[f"blocks.{i}.{target}"] = v
                    break
            else:
                out[key] = v
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return {k: v.contiguous() for k, v in out.items()}


def check_state_dict(
    model: nn.Module,
    state: dict[str, Tensor],
    source: str = "checkpoint",
    expected: dict[str, Tensor] | None = None,
) -> None:
    """Raise a CheckpointError naming every missing, unexpected and wrongly shaped key.

    ``expected`` (default ``model.state_dict()``) is the state the checkpoint must match."""
    expected = model.state_dict() if expected is None else expected
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or wrong):
        return
    lines = [f"{source} does not fit {type(model).__name__}:"]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", wrong),
    ):
        if items:
            shown = items[:12] + ([f"... and {len(items) - 12} more"] if len(items) > 12 else [])
            lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
    if any(k.startswith("head") for k in missing + unexpected) or any(w.startswith("head") for w in wrong):
        lines.append("  (a different classifier head? pass ignore_head=True to keep the model's own head)")
    raise CheckpointError("\n".join(lines))


# ---------------------------------------------------------------- HuggingFace GPT-2
_TOP = {"wte.": "token_embed.", "wpe.": "pos_embed.", "ln_f.": "norm.", "lm_head.": "head."}
_BLOCK = {
    "ln_1.": "norm1.",
    "attn.c_attn.": "attn.qkv.",
    "attn.c_proj.": "attn.proj.",
    "ln_2.": "norm2.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_hf_gpt2(state: dict[str, Any]) -> bool:
    """Whether a state dict is in GPT-2's layout (``wte``/``h.N.attn.c_attn``, with or without ``transformer.``)."""
    return any(k.endswith("attn.c_attn.weight") for k in state) and any(
        k.endswith("wte.weight") for k in state
    )


def convert_hf_gpt2(state: dict[str, Tensor], tied: bool = True) -> dict[str, Tensor]:
    """GPT-2 state dict -> :class:`~vitkit.models.gpt.GPT` names. ``tied``: drop ``lm_head.weight`` (it must then
    equal the token embedding); untied, a file without one (tied on save, or a ``GPT2Model``) starts the head
    from the token embedding, which is what tying meant. Unknown keys are kept as they are (the key check names
    them)."""
    state = unwrap_state_dict(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("transformer.")
        if key.startswith("h."):
            _, i, rest = key.split(".", 2)
            if rest in ("attn.bias", "attn.masked_bias"):
                continue  # causal-mask buffers
            if rest in _CONV1D:
                value = value.t()
            for old, new in _BLOCK.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            out[f"blocks.{i}.{rest}"] = value.contiguous()
            continue
        for old, new in _TOP.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    if tied and "head.weight" in out:
        head = out.pop("head.weight")
        if "token_embed.weight" in out and not head.equal(out["token_embed.weight"]):
            raise ValueError(
                "lm_head.weight differs from wte.weight: load it into a GPT with tie_embeddings=False"
            )
    elif not tied and "head.weight" not in out and "token_embed.weight" in out:
        out["head.weight"] = out[
            "token_embed.weight"
        ].clone()  # a tied file (or GPT2Model) into an untied head
    return out


# ---------------------------------------------------------------- HuggingFace BERT
_BERT_EMBED = {
    "embeddings.word_embeddings.": "embeddings.word.",
    "embeddings.position_embeddings.": "embeddings.position.",
    "embeddings.token_type_embeddings.": "embeddings.token_type.",
    "embeddings.LayerNorm.": "embeddings.norm.",
    "pooler.dense.": "pooler.",
    "classifier.": "head.",
}
_BERT_BLOCK = {
    "attention.output.dense.": "attn.proj.",
    "attention.output.LayerNorm.": "norm1.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "output.LayerNorm.": "norm2.",
}


def convert_hf_bert(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HuggingFace ``BertModel`` / ``BertForSequenceClassification`` state dict -> :class:`~vitkit.models.bert.BertEncoder` names.

    The separate query/key/value projections are concatenated into the fused ``qkv`` layer; ``bert.`` prefixes and
    the ``position_ids`` buffer are dropped; old checkpoints' ``LayerNorm.gamma`` / ``beta`` are read as
    ``weight`` / ``bias`` (as transformers does). Keys it does not know are kept as they are (the key check names
    them).
    """

    state = unwrap_state_dict(state)  # training checkpoints, DDP / FSDP / torch.compile prefixes
    state = {_new_norm_name(k[5:] if k.startswith("bert.") else k): v for k, v in state.items()}
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
            for old, new in _BERT_BLOCK.items():
                if rest.startswith(old):
                    out[f"blocks.{i}.{new}{rest[len(old) :]}"] = value
                    break
            else:
                out[key] = value
            continue
        for old, new in _BERT_EMBED.items():
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


def _new_norm_name(key: str) -> str:
    if "LayerNorm." in key and key.endswith((".gamma", ".beta")):
        return key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
    return key
