"""Throughput of vitkit's ViTs against timm and HuggingFace transformers, on one machine in one run.

What is compared
    For each model config (ViT-Ti/16 @224, ViT-S/16 @224, and the 32x32 patch-4 ``vit_cifar``) three
    implementations are built with identical shapes: ``timm.create_model(...)``, ``vitkit.create_model(...)``
    with timm's state dict loaded through ``vitkit.load_pretrained``, and
    ``transformers.ViTForImageClassification`` (``layer_norm_eps=1e-6``, ``attn_implementation="sdpa"``) with
    the same weights converted to HF names (q/k/v split out of the fused qkv). Before timing, the logits of
    the three are compared on one batch, so the table is known to time the same function. HF ViT has no
    average pooling: for ``vit_cifar`` it classifies the class token instead (the final norm takes
    vitkit's ``fc_norm`` weights), which changes the logits but not the cost (one token vs a mean of 64).

What is measured
    - inference: ``model.eval()``, ``torch.inference_mode()``, forward pass only;
    - training step: ``model.train()``, forward + cross-entropy + backward + ``AdamW.step()`` + ``zero_grad``.
    Each library gets its own model copy and optimizer; all get the same input batch. ``--dtype bfloat16``
    runs the forward (and loss) under ``torch.autocast`` (bf16 autocast, the usual mixed precision);
    ``--compile`` wraps all three models in ``torch.compile``; ``--compile both`` times eager and compiled
    rows in the same run.

How
    Each library first runs ``--warmup`` untimed calls (compilation, lazy initialisation, AdamW state
    creation, heap growth, cuDNN autotuning and allocator warm-up) on the full batch (``--warmup-batch``
    makes them cheaper, but on CPU the first full-size call then still runs 5-30% slow, inside the first
    timed round). The last warm-up call calibrates ``iters``, the number of back-to-back iterations in one
    *measurement* (about ``--min-time`` seconds, the same for the three libraries; 1 on a small CPU). A measurement records seconds per iteration (CUDA synchronised at both
    ends). Then ``--repeats`` rounds interleave the libraries round-robin (timm, vitkit, hf, then vitkit, hf,
    timm, ...: the start rotates each round), so that machine noise (other processes, clock changes) falls on
    all of them alike. Throughput = batch / median seconds per iteration; achieved GFLOP/s =
    ``vitkit.models.vit_flops`` (forward FLOPs per image) x images/s, x3 for a training step (backward ~ 2x
    forward; the optimizer is not counted). The ratio columns are vitkit's speed over the other library's,
    taken per round (whose measurements run back to back, so a burst of outside load hits both) and reported
    as the median over rounds with the [min-max] after it, a direct read of how noisy the comparison was;
    "best-vs-best" divides the fastest measurements (outside load only ever adds time, so the minimum is the
    most robust estimate of each library's own cost). "outside load" is the CPU time other processes took
    during a row's timed rounds (from /proc/stat), in cores: on a shared machine re-run rows where it is
    not ~0, because with as many threads as cores one busy neighbour core can halve a synchronised kernel.
    Model FLOPs utilisation (MFU) = achieved FLOP/s / the device's peak: known GPUs' dense bf16/fp32 peaks are
    built in (``PEAK_TFLOPS``), any other device takes ``--peak-tflops``; without a peak the column is omitted.

Run from the repository root (timm and transformers are imported through ``tests/refs.py``):

    .venv/bin/python benchmarks/bench_models.py                      # CPU, all models, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_models.py --device cuda --dtype bfloat16 --compile both
    .venv/bin/python benchmarks/bench_models.py --models vit_tiny --compile both --peak-tflops measure
    .venv/bin/python benchmarks/bench_models.py --models vit_cifar --repeats 9 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # refs: imports timm / transformers beside this torch
sys.path.insert(0, str(ROOT / "src"))  # vitkit, also without an editable install

import vitkit  # noqa: E402
from vitkit.models import vit_flops  # noqa: E402

LIBS = ("timm", "vitkit", "hf")

# Dense (no sparsity) peak TFLOP/s by GPU name fragment: (bf16 tensor core, fp32 with TF32 tensor cores).
PEAK_TFLOPS = {
    "H200": (989.4, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.4, 494.7),  # SXM
    "A100": (312.0, 156.0),
    "L4": (121.0, 60.0),
}


def measured_matmul_tflops(device: str, dtype: str, n: int = 2048, iters: int = 10) -> float:
    """What this device achieves on a large square matmul (fp32, or bf16 with ``dtype``): a measured ceiling for
    machines without a published peak (CPUs), where the dense-GEMM rate is the honest 100%."""
    dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def device_peak_tflops(args: argparse.Namespace) -> float | None:
    """The peak MFU is measured against: ``--peak-tflops`` (a number, or ``measure``: the rate of a large matmul
    here), else the table for a known GPU, else None."""
    if args.peak_tflops == "measure":
        return measured_matmul_tflops(args.device, args.dtype)
    if args.peak_tflops:
        return float(args.peak_tflops)
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for fragment, (bf16, tf32) in PEAK_TFLOPS.items():
        if fragment in name:
            return bf16 if args.dtype == "bfloat16" else tf32
    return None


@dataclass(frozen=True)
class Spec:
    label: str
    vitkit_name: str
    timm_name: str
    timm_kwargs: dict
    batch_cpu: int
    batch_cuda: int


SPECS = {
    "vit_tiny": Spec("ViT-Ti/16 @224", "vit_tiny_patch16_224", "vit_tiny_patch16_224", {}, 32, 256),
    "vit_small": Spec("ViT-S/16 @224", "vit_small_patch16_224", "vit_small_patch16_224", {}, 32, 256),
    "vit_base": Spec("ViT-B/16 @224", "vit_base_patch16_224", "vit_base_patch16_224", {}, 8, 256),
    "vit_cifar": Spec(
        "vit_cifar (32px, p4, avg)",
        "vit_cifar",
        "vit_tiny_patch16_224",
        dict(
            img_size=32,
            patch_size=4,
            embed_dim=192,
            depth=9,
            num_heads=3,
            mlp_ratio=2,
            global_pool="avg",
            num_classes=10,
        ),
        128,
        1024,
    ),  # fmt: skip
}


# ---------------------------------------------------------------- models
def _hf_state_from_vitkit(vk: dict[str, Tensor], hf_keys: list[str], use_fc_norm: bool) -> dict[str, Tensor]:
    """vitkit (= timm) names -> transformers ViTForImageClassification names (both the v4 and v5 layouts)."""
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": ("fc_norm" if use_fc_norm else "norm") + ".weight",
        "layernorm.bias": ("fc_norm" if use_fc_norm else "norm") + ".bias",
    }
    block = {
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "attention.o_proj": "attn.proj",
        "attention.output.dense": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "intermediate.dense": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "output.dense": "mlp.fc2",
    }
    qkv_index = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "attention.query": 0, "attention.key": 1}
    qkv_index["attention.value"] = 2
    out = {}
    for key in hf_keys:
        k = key.removeprefix("vit.")
        if k.startswith("classifier."):
            out[key] = vk["head." + k.split(".", 1)[1]]
        elif k in top:
            out[key] = vk[top[k]]
        else:  # (encoder.layer|layers).{i}.{name}.{weight|bias}
            parts = k.split(".")
            i = parts[2] if parts[0] == "encoder" else parts[1]
            name = ".".join(parts[3 if parts[0] == "encoder" else 2 : -1])
            kind = parts[-1]
            sub = name.removeprefix("attention.")
            if sub in qkv_index or name in qkv_index:
                j = qkv_index.get(sub, qkv_index.get(name))
                out[key] = vk[f"blocks.{i}.attn.qkv.{kind}"].chunk(3, dim=0)[j]
            elif name in block:
                out[key] = vk[f"blocks.{i}.{block[name]}.{kind}"]
            else:
                raise KeyError(f"don't know where HF parameter {key!r} comes from in vitkit")
    return out


def build_models(spec: Spec) -> dict[str, nn.Module]:
    from refs import import_timm, import_transformers

    timm = import_timm()
    import_transformers()
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    ref = timm.create_model(spec.timm_name, pretrained=False, **spec.timm_kwargs)
    ours = vitkit.create_model(spec.vitkit_name)
    vitkit.load_pretrained(ours, ref.state_dict())

    cfg = ours.config
    hf_cfg = ViTConfig(
        hidden_size=cfg["embed_dim"],
        num_hidden_layers=cfg["depth"],
        num_attention_heads=cfg["num_heads"],
        intermediate_size=int(cfg["embed_dim"] * cfg["mlp_ratio"]),
        image_size=cfg["img_size"][0],
        patch_size=cfg["patch_size"][0],
        num_channels=cfg["in_chans"],
        num_labels=cfg["num_classes"],
        qkv_bias=cfg["qkv_bias"],
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-6,
        attn_implementation="sdpa",
    )
    hf = ViTForImageClassification(hf_cfg)
    if hf.config._attn_implementation != "sdpa":
        raise RuntimeError(f"HF ViT uses {hf.config._attn_implementation!r} attention, not sdpa")
    hf_state = _hf_state_from_vitkit(ours.state_dict(), list(hf.state_dict()), cfg["global_pool"] == "avg")
    hf.load_state_dict(hf_state, strict=True)
    return {"timm": ref, "vitkit": ours, "hf": hf}


def forward_fn(lib: str, model: nn.Module) -> Callable[[Tensor], Tensor]:
    if lib == "hf":
        return lambda x: model(pixel_values=x).logits
    return model


def parity(models: dict[str, nn.Module], x: Tensor) -> dict[str, float]:
    """Max |logit difference| of timm and HF against vitkit (fp32, eval, no compile)."""
    with torch.inference_mode():
        outs = {lib: forward_fn(lib, m.eval())(x).float() for lib, m in models.items()}
    return {lib: (outs[lib] - outs["vitkit"]).abs().max().item() for lib in ("timm", "hf")}


# ---------------------------------------------------------------- timing
@dataclass
class Result:
    model: str
    label: str
    mode: str
    batch: int
    iters: int
    gflops_per_img: float
    compiled: bool = False
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per-iteration times of the kept rounds
    outside_load: float | None = None  # CPU cores busy with other processes during the timed rounds

    def img_s(self, lib: str) -> float:
        return self.batch / statistics.median(self.seconds[lib])

    def gflop_s(self, lib: str) -> float:
        return self.img_s(lib) * self.gflops_per_img * (3 if self.mode == "train" else 1)

    def mfu(self, lib: str, peak_tflops: float | None) -> float | None:
        return None if not peak_tflops else self.gflop_s(lib) / (peak_tflops * 1e3)

    def ratio(self, lib: str) -> tuple[float, float, float]:
        """vitkit speed / lib speed per round (the rounds' measurements run back to back): median, min, max."""
        paired = [t / v for t, v in zip(self.seconds[lib], self.seconds["vitkit"], strict=True)]
        return statistics.median(paired), min(paired), max(paired)

    def best_ratio(self, lib: str) -> float:
        """vitkit speed / lib speed from each one's fastest measurement (outside load only ever adds time)."""
        return min(self.seconds[lib]) / min(self.seconds["vitkit"])


class OutsideLoad:
    """CPU time that other processes take while we measure (Linux /proc/stat; None elsewhere).

    Busy jiffies of the whole machine minus this process's own CPU time, over the wall time: ~0 on a quiet
    machine, ~1 when another process keeps one core busy (which, with as many threads as cores, can slow a
    synchronised multi-threaded kernel far more than by its share).
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                jiffies = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def cores(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        return max(0.0, ((end[1] - self.start[1]) - (end[2] - self.start[2])) / (end[0] - self.start[0]))


def make_step(lib: str, model: nn.Module, mode: str, autocast) -> Callable[[Tensor, Tensor], None]:
    """One inference call or one training step (with its own AdamW) of ``model`` on a batch (x, y)."""
    fwd = forward_fn(lib, model)
    if mode == "infer":

        def infer(x: Tensor, y: Tensor) -> None:
            with torch.inference_mode(), autocast():
                fwd(x)

        return infer

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def train(x: Tensor, y: Tensor) -> None:
        with autocast():
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return train


def measure(step: Callable[[Tensor, Tensor], None], x: Tensor, y: Tensor, iters: int, sync) -> float:
    """Seconds per iteration of ``iters`` back-to-back steps."""
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step(x, y)
    sync()
    return (time.perf_counter() - t0) / iters


def bench(name: str, args: argparse.Namespace, compiled: bool, log: Callable[[str], None]) -> list[Result]:
    spec = SPECS[name]
    device = torch.device(args.device)
    batch = args.batch_size or (spec.batch_cuda if device.type == "cuda" else spec.batch_cpu)
    models = build_models(spec)
    flops = vit_flops(models["vitkit"]) / 1e9
    img = models["vitkit"].patch_embed.img_size
    ncls = models["vitkit"].num_classes
    gen = torch.Generator().manual_seed(0)
    x_check = torch.randn(4, 3, *img, generator=gen)
    diff = parity(models, x_check)
    hf_note = " (HF pools the class token: not comparable)" if name == "vit_cifar" else ""
    log(f"{spec.label}: {flops:.3f} GFLOPs/img, batch {batch}; max |logit diff| vs vitkit: "
        f"timm {diff['timm']:.1e}, HF {diff['hf']:.1e}{hf_note}")  # fmt: skip

    x = torch.randn(batch, 3, *img, generator=gen).to(device)
    y = torch.randint(0, ncls, (batch,), generator=gen).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.dtype == "bfloat16":

        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    for lib, m in models.items():
        m.to(device)
        if compiled:
            models[lib] = torch.compile(m)

    results = []
    for mode in ("infer", "train"):
        for m in models.values():
            m.train(mode == "train")
        steps = {lib: make_step(lib, models[lib], mode, autocast) for lib in LIBS}
        t_start = time.perf_counter()
        wb = min(batch, args.warmup_batch or batch)
        for _ in range(args.warmup):  # first calls: compilation, lazy init, AdamW state, kernel warm-up
            t_iter = min(measure(steps[lib], x[:wb], y[:wb], 1, sync) for lib in LIBS)
        iters = max(1, min(args.max_iters, math.ceil(args.min_time / (t_iter * batch / wb))))
        res = Result(name, spec.label, mode, batch, iters, flops, compiled, {lib: [] for lib in LIBS})
        load = OutsideLoad()
        for r in range(args.repeats):
            for lib in LIBS[r % 3 :] + LIBS[: r % 3]:
                res.seconds[lib].append(measure(steps[lib], x, y, iters, sync))
        res.outside_load = load.cores()
        ratio = res.ratio("timm")
        log(f"  {mode:5s}{' compiled' if compiled else ''}: {iters} iter/measurement, {time.perf_counter() - t_start:.0f}s; img/s "
            + ", ".join(f"{lib} {res.img_s(lib):.1f}" for lib in LIBS)
            + f"; vitkit/timm {ratio[0]:.3f} [{ratio[1]:.3f}-{ratio[2]:.3f}] best {res.best_ratio('timm'):.3f}"
            + f"; outside load {_fmt_load(res.outside_load)} cores")  # fmt: skip
        results.append(res)
        del steps
    del models
    return results


# ---------------------------------------------------------------- report
def machine_info(args: argparse.Namespace, peak_tflops: float | None) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from refs import import_timm, import_transformers

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "timm": import_timm().__version__,
        "transformers": import_transformers().__version__,
        "vitkit": vitkit.__version__,
        "device": args.device,
        "dtype": args.dtype + (" (autocast)" if args.dtype == "bfloat16" else ""),
        "compile": args.compile,
        "peak TFLOP/s for MFU": f"{peak_tflops:.4f}" if peak_tflops else "n/a",
        "method": f"median of {args.repeats} interleaved rounds after {args.warmup} warm-up call(s) per library, "
        f"~{args.min_time}s per measurement",
        "outside load at start (cores, 1 s sample)": _fmt_load(_sample_outside_load(1.0)),
    }
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    return info


def _sample_outside_load(seconds: float) -> float | None:
    load = OutsideLoad()
    time.sleep(seconds)
    return load.cores()


def _fmt_load(cores: float | None) -> str:
    return "n/a" if cores is None else f"{cores:.2f}"


def table(results: list[Result], peak_tflops: float | None = None) -> str:
    unit = "GFLOP/s, MFU" if peak_tflops else "GFLOP/s"
    head = ["model", "batch", "GFLOPs/img", "mode", f"timm img/s ({unit})", f"vitkit img/s ({unit})",
            f"HF img/s ({unit})", "vitkit/timm [rounds min-max]", "vitkit/HF [rounds min-max]",
            "vitkit/timm best-vs-best", "outside load (cores)"]  # fmt: skip
    rows = []
    for r in results:
        mode = {"infer": "inference", "train": "train step"}[r.mode] + (", compiled" if r.compiled else "")
        cells = [r.label, str(r.batch), f"{r.gflops_per_img:.3f}", mode]
        for lib in LIBS:
            mfu = r.mfu(lib, peak_tflops)
            cells.append(
                f"{r.img_s(lib):.1f} ({r.gflop_s(lib):.1f}" + (f", {mfu:.1%})" if mfu is not None else ")")
            )
        for lib in ("timm", "hf"):
            mid, lo, hi = r.ratio(lib)
            cells.append(f"**{mid:.3f}** [{lo:.2f}-{hi:.2f}]")
        cells += [f"{r.best_ratio('timm'):.3f}", _fmt_load(r.outside_load)]
        rows.append(cells)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in rows])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument(
        "--compile",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "on", "both"),
        help="torch.compile all three models (on), or time eager and compiled rows in one run (both)",
    )
    p.add_argument(
        "--peak-tflops",
        default=None,
        help="device peak TFLOP/s for the MFU column, or 'measure' (a large matmul's rate here); default: built in "
        "for known GPUs, none on CPU",
    )
    p.add_argument("--models", nargs="+", choices=list(SPECS), default=list(SPECS))
    p.add_argument("--batch-size", type=int, default=None, help="override every model's batch size")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: cpu 3, cuda 10)")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed calls per library first (default: cpu 1, cuda 3; +1 with --compile)",
    )
    p.add_argument(
        "--warmup-batch",
        type=int,
        default=None,
        help="batch of the warm-up calls (default: the full batch); smaller is quicker, but on CPU the first "
        "full-size call then lands in the first timed round, and --compile recompiles",
    )
    p.add_argument("--min-time", type=float, default=None, help="seconds per measurement (cpu 0.5, cuda 0.3)")
    p.add_argument("--max-iters", type=int, default=200, help="cap on iterations per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to this torch build")
    args.repeats = args.repeats or (10 if cuda else 3)
    args.warmup = max(1, args.warmup or (3 if cuda else 1) + int(args.compile != "off"))
    args.min_time = args.min_time or (0.3 if cuda else 0.5)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # the default fp32 mode of most training recipes
        torch.backends.cudnn.allow_tf32 = True

    peak = device_peak_tflops(args)  # measured once, before the models load
    info = machine_info(args, peak)
    print("## vitkit vs timm vs HuggingFace ViT throughput\n")
    for k, v in info.items():
        print(f"- {k}: {v}")
    print(flush=True)
    t0 = time.perf_counter()
    results = []
    variants = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for name in args.models:
        for compiled in variants:
            results += bench(name, args, compiled, lambda s: print(s, file=sys.stderr, flush=True))
    print(table(results, peak))
    print(f"\nimg/s = batch / median seconds per iteration; GFLOP/s counts the forward FLOPs x1 (inference) "
          f"or x3 (train step); ratio = median over rounds of the per-round speed ratio [min-max];\n"
          f"best-vs-best = ratio of the fastest measurements; outside load = CPU cores other processes kept busy "
          f"during the row's timed rounds (noise: re-run a row whose load is far from 0).\n"
          f"Total wall time {time.perf_counter() - t0:.0f}s.")  # fmt: skip
    if args.json:
        payload = {
            "machine": info,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": [
                {
                    "model": r.model, "label": r.label, "mode": r.mode, "compiled": r.compiled,
                    "batch": r.batch, "iters": r.iters, "mfu": {lib: r.mfu(lib, peak) for lib in LIBS},
                    "gflops_per_img": r.gflops_per_img, "seconds_per_iter": r.seconds,
                    "img_s": {lib: r.img_s(lib) for lib in LIBS},
                    "gflop_s": {lib: r.gflop_s(lib) for lib in LIBS},
                    "vitkit_over": {lib: r.ratio(lib)[0] for lib in ("timm", "hf")},
                    "vitkit_over_best": {lib: r.best_ratio(lib) for lib in ("timm", "hf")},
                    "outside_load_cores": r.outside_load,
                }
                for r in results
            ],
        }  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
