"""The command's start-up: `vitkit --help` and `vitkit models` import no PyTorch (issue 24: they took 3.8 s, most
of it importing torch); the torch-free catalog agrees with the families it names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vitkit import registry
from vitkit.models import catalog

PROBE = """
import sys
from vitkit.cli import main
try:
    code = main({argv!r})
except SystemExit as e:  # --help
    code = e.code
heavy = sorted(m for m in ("torch", "numpy", "scipy", "matplotlib", "tokenizers") if m in sys.modules)
print("HEAVY", heavy, "CODE", code)
"""


@pytest.mark.parametrize("argv", [["--help"], ["models", "vit_t*"], ["models"]], ids=" ".join)
def test_help_and_model_listing_import_no_pytorch(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert "HEAVY [] CODE 0" in out.stdout, out.stdout + out.stderr
    if argv[0] == "models":
        assert "vit_tiny_patch16_224" in out.stdout


def test_import_vitkit_is_lazy_and_create_model_loads_the_family():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, vitkit; print('torch' in sys.modules); "
         "m = vitkit.create_model('vit_digits'); print(type(m).__name__, 'torch' in sys.modules)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.stdout.split() == ["False", "VisionTransformer", "True"], out.stdout + out.stderr


def test_subpackages_load_on_first_use_and_unknown_names_fail():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, vitkit; print('torch' in sys.modules); "
         "print(vitkit.models.clip.CLIP.__name__, vitkit.tasks.detection.detections.__name__, vitkit.engine.trainer.Trainer.__name__)\n"
         "try:\n    vitkit.no_such_module\nexcept AttributeError as e:\n    print(e)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.stdout.splitlines() == [
        "False",
        "CLIP detections Trainer",
        "module 'vitkit' has no attribute 'no_such_module'",
    ], out.stdout + out.stderr


def test_every_catalog_family_is_registered_by_its_module():
    families = {family for family, _ in catalog.MODELS.values()}
    assert families <= set(catalog.FAMILY_MODULES), families - set(catalog.FAMILY_MODULES)
    for family in catalog.FAMILY_MODULES:
        cls = registry.get_family(family)  # imports the module, which registers the class under that name
        assert cls.family == family
    with pytest.raises(ValueError, match="unknown model family 'nope'; known families: .*'vit'"):
        registry.get_family("nope")


def test_deterministic_mode_without_importing_inductor():
    """A run that compiles nothing sets deterministic algorithms without TorchInductor's import (a second or more
    of every `vitkit train`); one that compiles sets Inductor's flag too."""
    code = (
        "import sys, torch; from vitkit.engine.runtime import seed_everything; seed_everything(0); "
        "a = (torch.are_deterministic_algorithms_enabled(), 'torch._inductor.config' in sys.modules); "
        "seed_everything(0, compiled=True); import torch._inductor.config as c; print(a, c.deterministic)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "(True, False) True", out.stdout + out.stderr
