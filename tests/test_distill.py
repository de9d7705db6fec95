"""DeiT distillation: the loss against hand-computed values, the frozen teacher, the ResNet teacher, end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.models import ResNet
from vitkit.tasks import build_trainer
from vitkit.tasks import resolve_task_config as resolve_config
from vitkit.tasks.distill import DistillationLoss, TeacherInput, hard_distillation, soft_distillation


def test_soft_distillation_matches_hand_computed_kl():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    tau = 2.0
    expected = 0.0
    for si, ti in zip(s.tolist(), t.tolist(), strict=True):
        zs = [math.exp(v / tau) for v in si]
        zt = [math.exp(v / tau) for v in ti]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        expected += sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True))
    expected = expected / len(s) * tau**2
    assert soft_distillation(s, t, tau).item() == pytest.approx(expected, rel=1e-6)
    assert soft_distillation(t, t, tau).item() == pytest.approx(0.0, abs=1e-7)


def test_hard_distillation_uses_the_teachers_argmax():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    t = torch.tensor([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0]])
    expected = (-F.log_softmax(s, -1)[0, 1] - F.log_softmax(s, -1)[1, 0]) / 2
    assert hard_distillation(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_weights_labels_and_teacher_and_uses_the_distillation_head():
    teacher = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    cls_logits, dist_logits = torch.randn(5, 3), torch.randn(5, 3)
    loss = DistillationLoss(teacher, F.cross_entropy, kind="soft", alpha=0.25, tau=3.0)
    with torch.no_grad():
        t = teacher(x)
    expected = 0.75 * F.cross_entropy(cls_logits, y) + 0.25 * soft_distillation(dist_logits, t, 3.0)
    assert loss((cls_logits, dist_logits), y, x).item() == pytest.approx(expected.item(), rel=1e-6)
    # a student with one head uses it for both terms
    one = loss(cls_logits, y, x)
    assert one.item() == pytest.approx(
        (0.75 * F.cross_entropy(cls_logits, y) + 0.25 * soft_distillation(cls_logits, t, 3.0)).item(),
        rel=1e-6,
    )
    with pytest.raises(ValueError, match="unknown distillation kind 'medium'"):
        DistillationLoss(teacher, F.cross_entropy, kind="medium")
    with pytest.raises(ValueError, match="alpha must be in"):
        DistillationLoss(teacher, F.cross_entropy, alpha=1.5)


def test_teacher_input_renormalises_and_resizes():
    raw = torch.rand(2, 1, 8, 8)
    student = (raw - 0.3) / 0.2
    adapt = TeacherInput([0.3], [0.2], [0.5], [0.25], teacher_size=(16, 16))
    out = adapt(student)
    assert out.shape == (2, 1, 16, 16)
    same_size = TeacherInput([0.3], [0.2], [0.5], [0.25])(student)
    torch.testing.assert_close(same_size, (raw - 0.5) / 0.25, atol=1e-5, rtol=1e-5)
    assert TeacherInput([0.3], [0.2], [0.3], [0.2]).identity


def test_resnet_registry_shapes_and_roundtrip(tmp_path):
    m = vitkit.create_model("resnet_mnist")
    assert isinstance(m, ResNet)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    vitkit.save(m.eval(), tmp_path / "r.safetensors")
    back = vitkit.load(tmp_path / "r.safetensors").eval()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(back(x), m(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="equal length"):
        ResNet(widths=(8, 16), depths=(1,))


def _digits_cfg(tmp_path, name, **kw):
    base = dict(dataset="digits", epochs=12, batch_size=64, lr=2e-3, warmup_epochs=0, drop_path=0.0, progress=False,
                out_dir=str(tmp_path), name=name)  # fmt: skip
    return resolve_config(**{**base, **kw})


def test_distilled_training_end_to_end_keeps_the_teacher_frozen(tmp_path):
    teacher_cfg = _digits_cfg(tmp_path, "teacher", model="resnet_mnist", epochs=6,
                              model_args={"img_size": 8, "widths": [16, 32], "depths": [1, 1], "stem_channels": 16})  # fmt: skip
    build_trainer(teacher_cfg).fit()
    teacher_path = tmp_path / "teacher" / "model.safetensors"
    frozen = {k: v.clone() for k, v in vitkit.load(teacher_path).state_dict().items()}

    cfg = _digits_cfg(tmp_path, "student", model="vit_digits", model_args={"distilled": True, "depth": 2},
                      teacher=str(tmp_path / "teacher"), distill="hard", distill_alpha=0.5)  # fmt: skip
    trainer = build_trainer(cfg)
    assert isinstance(trainer.task.loss_fn, DistillationLoss) and trainer.model.distilled_training
    batch = trainer.task.train_batch(next(iter(trainer.train_loader)))
    out = trainer.model.train()(batch["inputs"])
    assert isinstance(out, tuple) and len(out) == 2  # class head and distillation head while training
    summary = trainer.fit()
    assert math.isfinite(summary["val_loss"]) and summary["val_acc"] > 0.5  # learning happened (chance 0.1)
    for k, v in trainer.task.loss_fn.teacher.state_dict().items():  # BatchNorm statistics included
        torch.testing.assert_close(v, frozen[k], rtol=0, atol=0, msg=f"teacher {k} changed")
    student = vitkit.load(tmp_path / "student" / "model.safetensors").eval()
    assert student(torch.randn(2, 1, 8, 8)).shape == (2, 10)  # inference: the heads averaged


def test_teacher_with_other_channels_is_refused(tmp_path):
    rgb = vitkit.create_model("resnet_cifar", widths=[8], depths=[1], stem_channels=8)
    rgb.data_config = {"in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "img_size": [32, 32]}
    vitkit.save(rgb, tmp_path / "rgb.safetensors")
    cfg = _digits_cfg(tmp_path, "s", model="vit_digits", teacher=str(tmp_path / "rgb.safetensors"))
    with pytest.raises(ValueError, match="takes 3-channel images but digits has 1"):
        build_trainer(cfg)
