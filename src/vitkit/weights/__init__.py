"""Weights: safe checkpoint reading, timm/HF/JAX conversion, and vitkit's self-describing save/load.

Layers, lowest first: :mod:`.qstate` and :mod:`.files` (read/write checkpoint files) -> :mod:`.convert` (key
layouts) -> :mod:`.pretrained` (weights into a built model) and :mod:`.hub` (``hf-hub:`` ids: Hugging Face Hub
downloads and pretrained cfgs) -> the model registry -> :mod:`.rebuild` (``load``: a saved model back) and
:mod:`.hf_bert` / :mod:`.hf_gpt2` / :mod:`.hf_clip` (HuggingFace BERT, GPT-2 and CLIP / SigLIP folders;
:mod:`.convert_clip` maps CLIP / SigLIP / open_clip keys).
"""

from .convert import check_state_dict, convert_hf_gpt2, detect_layout, hf_to_vitkit, jax_to_vitkit
from .convert_clip import convert_hf_clip, convert_hf_siglip, convert_open_clip
from .files import CheckpointError, atomic_write, read_checkpoint, read_metadata, save
from .hf_bert import bert_config_from_hf, bert_from_huggingface, convert_hf_bert
from .hf_clip import clip_config_from_hf, clip_from_huggingface
from .hf_gpt2 import gpt2_config_from_hf, gpt2_from_huggingface
from .pretrained import convert_state_dict, load_pretrained
from .rebuild import load

__all__ = [
    "CheckpointError",
    "atomic_write",
    "bert_config_from_hf",
    "bert_from_huggingface",
    "check_state_dict",
    "clip_config_from_hf",
    "clip_from_huggingface",
    "convert_hf_clip",
    "convert_hf_siglip",
    "convert_open_clip",
    "convert_hf_bert",
    "convert_hf_gpt2",
    "gpt2_config_from_hf",
    "gpt2_from_huggingface",
    "convert_state_dict",
    "detect_layout",
    "hf_to_vitkit",
    "jax_to_vitkit",
    "load",
    "load_pretrained",
    "read_checkpoint",
    "read_metadata",
    "save",
]
