"""Quantization-aware fine-tuning for one backend, from labelled data or from the fp32 model alone.

    python -m espnet_mobile.qat --model ID --backend {xnnpack,coreml,tflite} --data SPEC
        [--steps N | --epochs N] [--fp32-steps N] [--batch-size B] [--lr LR] [--out DIR]
        [--resume] [--seed S] [--weights PATH] [--input-size HxW] [--eval-every K]
        [--checkpoint-every N] [--artifact-eval {all,final,none}] [--threads T] [--max-trained-gain G]

    torchrun --nproc_per_node=2 -m espnet_mobile.qat ...      # DDP: gloo on CPU, NCCL on GPUs

``SPEC``: ``synthetic[:N]`` (default; N held-out scenes), ``cityscapes:DIR``,
``voc:DIR``, ``camvid:DIR``, or ``distill:DIR`` (any folder of photos; the fp32
model is the teacher). The deployable graph is captured in training mode and
prepared with ``prepare_qat_pt2e`` and the backend's own quantizer
(:mod:`espnet_mobile.qat_graph`); the checkpoint converts with
``python -m espnet_mobile.convert --qat-checkpoint OUT/checkpoint.pt --target
<executorch|coreml|tflite> --precision int8`` and no calibration.

Schedule: an optional fp32 fine-tuning phase (``--fp32-steps``; default: as many
steps as QAT for ``synthetic``, whose classes the checkpoints never saw, else
none), then QAT. QAT starts from the activation ranges post-training
quantization would choose (histogram search on the calibration inputs) and by
default keeps them, and the weights' ranges, fixed (``--observer-freeze 0``);
BatchNorm statistics stay frozen (``--bn-freeze F`` updates them for that share
of the steps). Adam (QAT learning rate 1e-5 for ``distill:``, where at 1e-4 a
10-step run drifted to 66 mIoU against its own teacher; 3e-4 with labels, where
QAT also goes on learning the task), cosine learning-rate decay; the weights of layers whose gain exceeds
``--max-trained-gain`` (BatchNorms with collapsed variance, see
``qat_graph.high_gain_parameters``) are not trained (their BatchNorm
statistics still update while BatchNorm trains).

Scores: mIoU over the classes present in the held-out labels and pixel
accuracy (:func:`espnet_mobile.qat_eval.scores`); ``*_miou_all`` in
``metrics.json`` also averages classes that are only predicted, and
``class_iou`` gives fp32, PTQ and QAT IoU class by class. For ``distill:``,
``class_coverage`` counts the teacher's confident pixels per class on the
training photos (cut into the held-out views) and the held-out crops, and the run warns about held-out
classes no training photo shows: QAT cannot learn to keep them.

Loss: cross-entropy on labels (255 ignored); for ``distill:`` cross-entropy on
the teacher's argmax plus KL divergence on temperature-softened logits (T=2).
Augmentation: random scale, crop and horizontal flip (:mod:`espnet_mobile.qat_data`).

Results in ``--out`` (default ``qat_runs/<model>_<backend>_<data kind>``):
``checkpoint.pt`` (written atomically every ``--checkpoint-every`` steps and at
the end), ``metrics.json``, ``fp32_finetuned.pth`` after an fp32 phase (the
reference weights, for ``convert --weights``), and the int8 artifacts scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from converters.common import DEFAULT_MAX_WEIGHT_GAIN
from espnet_mobile import equalize as EQ
from espnet_mobile import qat_checkpoint as C
from espnet_mobile import qat_data as D
from espnet_mobile import qat_eval as E
from espnet_mobile import qat_graph as G
from espnet_mobile.bundle import write_json_atomic
from espnet_mobile.errors import UserError, run_cli

DEFAULT_STEPS = 100
#: QAT learning rates (Adam) when --lr is not given. Distillation stays close to its teacher: at 1e-4
#: ESPNetv2 drifted from it within 10 steps. With labels QAT also goes on learning the task: on
#: ``synthetic`` (ESPNetv2 at 128x128, 400 fp32 steps to 77.46 mIoU, then 150 QAT steps of 8 with
#: BatchNorm frozen) the int8 artifact scored 73.38 at 1e-4 and 77.35 at 3e-4.
DISTILL_LR = 1e-5
LABELLED_LR = 3e-4
#: fp32 phase learning rate (Adam): on ``synthetic`` 400 steps reached 55.30 mIoU at 1e-3 and 77.46 at 3e-3.
FP32_LR = 3e-3
OBSERVER_FREEZE = 0.0
#: Share of the QAT steps during which BatchNorm statistics still update (0: frozen throughout). On
#: ``synthetic`` at batch 8, updating them for 70% of the steps cost 4 to 8 mIoU: at a learning rate of
#: 3e-5, where the weights barely move, the QAT model's own fp32 score fell from 77.46 to 73.10 in 64 steps.
BN_FREEZE = 0.0
TEMPERATURE = 2.0
KD_WEIGHT = 1.0
#: Layers (BatchNorm, and the conv before it) whose gain exceeds this are not trained in QAT
#: (qat_graph.high_gain_parameters); the same threshold keeps convs in float in the converters.
MAX_TRAINED_GAIN = DEFAULT_MAX_WEIGHT_GAIN
MAX_EVALS_PER_PHASE = 10
#: |mIoU(torchrun, 2 processes) - mIoU(1 process)| allowed by tests/test_qat.py, in points. Both see the
#: same samples, average the same gradient and synchronize observer ranges after every forward
#: (qat_graph.sync_observers); they differ only where training-mode BatchNorm normalizes with
#: per-process batch statistics (and keeps process 0's running statistics).
DDP_MIOU_TOLERANCE = 2.0
CALIBRATION_IMAGES = 32
#: Training photos (each cut into the held-out views) on which distillation checks which classes it can learn.
COVERAGE_PHOTOS = 64
METRICS_NAME = "metrics.json"
FP32_WEIGHTS_NAME = "fp32_finetuned.pth"
INT8_SOURCE = {
    "xnnpack": "artifact: ExecuTorch .pte run by the ExecuTorch runtime (XNNPACK delegate)",
    "tflite": "artifact: .tflite run by the LiteRT interpreter (CPU, XNNPACK)",
    "coreml": "simulated: PT2E quantize/dequantize graph in PyTorch (Core ML runs only on Apple platforms); "
              "the .mlpackage is converted and checked but not run",
}

# --------------------------------------------------------------------------- configuration


@dataclass
class RunConfig:
    """Everything that determines a run's numbers (stored in the checkpoint)."""

    model: str
    backend: str
    data: str = "synthetic"
    input_size: tuple[int, int] | None = None
    steps: int | None = None
    epochs: float | None = None
    fp32_steps: int | None = None
    batch_size: int = 8
    lr: float | None = None  # None: DISTILL_LR for distill, else LABELLED_LR
    fp32_lr: float = FP32_LR
    seed: int = 0
    weights: str | None = None
    observer_freeze: float = OBSERVER_FREEZE
    bn_freeze: float = BN_FREEZE
    temperature: float = TEMPERATURE
    kd_weight: float = KD_WEIGHT
    eval_every: int | None = None
    eval_limit: int | None = 200
    calibration_images: int = CALIBRATION_IMAGES
    max_trained_gain: float = MAX_TRAINED_GAIN  # 0: train every parameter

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = None if self.input_size is None else list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d.setdefault("max_trained_gain", 0.0)  # checkpoints from before the option trained every layer
        if d.get("input_size") is not None:
            d["input_size"] = tuple(d["input_size"])
        return cls(**d)


#: Settings that may differ on --resume without changing the numbers.
RESUME_FREE = ("eval_limit",)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--input-size must look like 256x256 (height x width), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise UserError(f"--input-size must be positive, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_mobile.qat",
                                description="Quantization-aware fine-tuning for one backend.")
    p.add_argument("--model", required=True, help="zoo id, e.g. espnetv2_s_2.0_pascal_256x256")
    p.add_argument("--backend", required=True, choices=G.BACKENDS)
    p.add_argument("--data", default=None,
                   help="synthetic[:N] | cityscapes:DIR | voc:DIR | camvid:DIR | distill:DIR (default synthetic)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help=f"QAT steps (default {DEFAULT_STEPS})")
    length.add_argument("--epochs", type=float, default=None, help="QAT epochs over the training split")
    p.add_argument("--fp32-steps", type=int, default=None,
                   help="fp32 fine-tuning steps before QAT (default: QAT's steps for synthetic, else 0)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size, split over processes (default 8)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"QAT learning rate (Adam, cosine decay; default {DISTILL_LR:g} for distill:, "
                        f"{LABELLED_LR:g} with labels)")
    p.add_argument("--fp32-lr", type=float, default=None, help=f"fp32 phase learning rate (default {FP32_LR:g})")
    p.add_argument("--out", type=Path, default=None, help="run folder (default qat_runs/<model>_<backend>_<kind>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--weights", default=None, help="fp32 checkpoint to start from (default: the published one)")
    p.add_argument("--input-size", default=None, metavar="HxW", help="training and artifact size (default: the zoo's)")
    p.add_argument("--eval-every", type=int, default=None, metavar="K",
                   help="evaluate every K steps (default: every epoch, at most 10 times per phase)")
    p.add_argument("--checkpoint-every", type=int, default=20, metavar="N", help="checkpoint every N steps")
    p.add_argument("--artifact-eval", choices=("all", "final", "none"), default="all",
                   help="convert and run the int8 artifact at every evaluation (all), only at the end, or never")
    p.add_argument("--observer-freeze", type=float, default=None,
                   help=f"fraction of QAT steps after which observers stop (default {OBSERVER_FREEZE})")
    p.add_argument("--bn-freeze", type=float, default=None,
                   help=f"fraction of QAT steps after which BatchNorm statistics freeze (default {BN_FREEZE:g}: "
                        "frozen throughout)")
    p.add_argument("--temperature", type=float, default=None, help=f"distillation temperature (default {TEMPERATURE})")
    p.add_argument("--kd-weight", type=float, default=None,
                   help=f"weight of the distillation KL term (default {KD_WEIGHT})")
    p.add_argument("--max-trained-gain", type=float, default=None,
                   help=f"do not train BatchNorms (and their convs) whose gain exceeds this (default "
                        f"{MAX_TRAINED_GAIN:g}; 0 trains every parameter)")
    p.add_argument("--eval-limit", type=int, default=200, help="held-out images of a labelled dataset")
    p.add_argument("--calibration-images", type=int, default=None,
                   help=f"training images (each also flipped) calibrating the PTQ baseline and the pyramid "
                        f"equalization (default {CALIBRATION_IMAGES})")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads per process (default 1: on a shared CPU more threads are slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


#: Options compared with the checkpoint on --resume when given (argparse default None = not given).
CONFIG_OPTIONS = ("data", "input_size", "steps", "epochs", "fp32_steps", "batch_size", "lr", "fp32_lr", "seed",
                  "weights", "observer_freeze", "bn_freeze", "temperature", "kd_weight", "eval_every",
                  "calibration_images", "max_trained_gain")


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, set[str]]:
    """The run's config (defaults filled in) and the names of the options given on the command line."""
    for name in ("steps", "fp32_steps", "checkpoint_every", "eval_every", "eval_limit", "threads", "batch_size",
                 "calibration_images"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "fp32_steps" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'fp32_steps' else '>= 1'}, "
                            f"got {value}")
    if args.epochs is not None and args.epochs <= 0:
        raise UserError(f"--epochs must be positive, got {args.epochs}")
    if args.max_trained_gain is not None and args.max_trained_gain < 0:
        raise UserError(f"--max-trained-gain must be >= 0 (0 trains every parameter), got {args.max_trained_gain}")
    for name in ("lr", "fp32_lr", "temperature"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    for name in ("observer_freeze", "bn_freeze"):
        if getattr(args, name) is not None and not 0.0 <= getattr(args, name) <= 1.0:
            raise UserError(f"--{name.replace('_', '-')} is a fraction of the steps, between 0 and 1")
    values = {name: getattr(args, name) for name in CONFIG_OPTIONS if name != "input_size"}
    values["input_size"] = _parse_size(args.input_size) if args.input_size else None
    given = {name for name, v in values.items() if v is not None}
    cfg = RunConfig(model=args.model, backend=args.backend, eval_limit=args.eval_limit,
                    **{k: v for k, v in values.items() if v is not None})
    return cfg, given


# --------------------------------------------------------------------------- processes


@dataclass
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum(self, value: float) -> float:
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item())


def init_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the group (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank, world, local, device)


# --------------------------------------------------------------------------- models


class NormalizedReference(nn.Module):
    """The reference model on RGB [0, 1] input, with the zoo's normalization as a frozen 1x1 conv."""

    def __init__(self, model: nn.Module, entry: Any) -> None:
        super().__init__()
        from espnet_mobile.deploy import InputNormalization

        self.normalize = InputNormalization(entry.normalization)
        for p in self.normalize.parameters():
            p.requires_grad_(False)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def _reference(entry: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    import espnet_mobile as em

    model = em.build_model(entry)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _base_weights(cfg: RunConfig, entry: Any) -> tuple[dict[str, torch.Tensor], str, str]:
    """The fp32 starting weights: state dict, path, sha256."""
    from espnet_mobile.weights import load_into, load_state_dict, resolve_weights

    resolved = resolve_weights(entry, cfg.weights)
    import espnet_mobile as em

    model = em.build_model(entry)
    load_into(model, load_state_dict(resolved.path), source=str(resolved.path))
    return model.state_dict(), str(resolved.path), resolved.sha256


def _lr_at(step: int, total: int, base: float) -> float:
    """Cosine decay from ``base`` to 5% of it over ``total`` steps."""
    if total <= 1:
        return base
    t = min(step / (total - 1), 1.0)
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t)))


def load_qat_module(path: str | Path) -> QATCheckpoint:
    """Rebuild the prepared graph of a QAT checkpoint with its trained state, ready to convert."""
    ckpt = C.load(Path(path))
    cfg = RunConfig.from_dict(ckpt["config"])
    if ckpt.get("qat_state") is None:
        raise UserError(f"QAT checkpoint {path} is still in its fp32 phase (step {ckpt['step']}); "
                        "resume it with python -m espnet_mobile.qat --resume until QAT has started")
    from espnet_mobile.zoo import get_entry

    entry = get_entry(cfg.model)
    h, w = cfg.input_size
    keep = (ckpt.get("qat_graph") or {}).get("fp32_nodes", [])
    prepared = G.prepare_qat(_reference(entry, ckpt["fp32_state"]), entry, cfg.backend, h, w, keep_fp32=keep)
    _load_state(prepared.module, ckpt["qat_state"], str(path))
    G.set_batchnorm_training(prepared.module, False)
    fp32_weights = ckpt.get("fp32_weights_file")
    if fp32_weights and not Path(fp32_weights).is_file():  # the run folder was moved: look beside the checkpoint
        beside = Path(path).parent / FP32_WEIGHTS_NAME
        fp32_weights = str(beside) if beside.is_file() else None
    return QATCheckpoint(module=G.for_conversion(prepared.module), config=cfg, phase=ckpt["phase"],
                         step=int(ckpt["step"]), path=Path(path), fp32_weights=fp32_weights,
                         report=prepared.report)


@dataclass
class QATCheckpoint:
    """A QAT checkpoint opened for conversion."""

    module: torch.fx.GraphModule
    config: RunConfig
    phase: str
    step: int
    path: Path
    fp32_weights: str | None
    report: dict[str, Any]

    @property
    def target(self) -> str:
        return G.CONVERT_TARGET[self.config.backend]


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    # TFLite graphs written before the int8 PReLU slopes were tiled along the width ([1,C,1,1] ->
    # [1,C,1,W], converters.tflite._decompose_prelu) hold the same values untiled.
    state = {k: v.expand_as(own[k]).contiguous()
             if k in own and v.dim() == 4 and own[k].dim() == 4 and v.shape != own[k].shape and v.shape[3] == 1
             and v.shape[:3] == own[k].shape[:3] and k.rsplit(".", 1)[-1].startswith("_prelu_") else v
             for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise UserError(f"QAT checkpoint {source} does not fit the graph rebuilt from its config ({first}); "
                        "it was written by another version or for another model") from None
    # Observers treat a state dict without per-module version metadata (ours are plain dicts) as
    # version 1 and reset their eps buffer to float32 eps; XNNPACK's activation observers use 2**-12.
    buffers = dict(module.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for key, value in state.items():
            if key.endswith(".eps") and key in buffers:
                buffers[key].copy_(value)


# --------------------------------------------------------------------------- losses


def _to_device(x: np.ndarray, dist: Dist) -> torch.Tensor:
    return torch.from_numpy(x).to(dist.device)


def label_loss(logits: torch.Tensor, labels: torch.Tensor, dist: Dist) -> tuple[torch.Tensor, float]:
    """Cross-entropy summed over labelled pixels / labelled pixels of the global batch (x world for DDP)."""
    valid = float((labels != D.IGNORE).sum().item())
    total = dist.sum(valid)
    loss = F.cross_entropy(logits, labels.long(), ignore_index=D.IGNORE, reduction="sum")
    return loss * (dist.world / max(total, 1.0)), total


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, cfg: RunConfig, dist: Dist,
                 global_pixels: float) -> torch.Tensor:
    """CE on the teacher's argmax + kd_weight * T^2 * KL(teacher_T || student_T), per pixel of the global batch."""
    hard = teacher.argmax(dim=1)
    ce = F.cross_entropy(student, hard, reduction="sum")
    t = cfg.temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                  reduction="sum") * (t * t)
    return (ce + cfg.kd_weight * kl) * (dist.world / global_pixels)


# --------------------------------------------------------------------------- the run


class Run:
    """One training run: fp32 phase (optional), QAT phase, final scoring; resumable at any checkpoint."""

    def __init__(self, cfg: RunConfig, out: Path, dist: Dist, *, checkpoint_every: int = 20,
                 artifact_eval: str = "all", progress: bool = True, resume: bool = False,
                 given: set[str] | None = None, log=print) -> None:
        from espnet_mobile.zoo import get_entry

        self.cfg, self.out, self.dist = cfg, Path(out), dist
        self.resume, self.given = resume, set(given if given is not None else CONFIG_OPTIONS)
        self.checkpoint_every, self.artifact_eval = checkpoint_every, artifact_eval
        self.progress, self.log = progress and dist.main, (log if dist.main else (lambda *a, **k: None))
        self.entry = get_entry(cfg.model)
        if cfg.input_size is None:
            cfg.input_size = (self.entry.input_height, self.entry.input_width)
        self.h, self.w = cfg.input_size
        if cfg.batch_size % dist.world:
            raise UserError(f"--batch-size {cfg.batch_size} must be divisible by the {dist.world} processes")
        self.wall_before = 0.0
        self.started = time.perf_counter()
        self.frozen: list[str] = []  # parameters QAT leaves untrained (high gain)
        self.coverage: dict[str, Any] | None = None  # distillation: classes the training photos show

    # ------------------------------------------------------------------ helpers

    @property
    def ckpt_path(self) -> Path:
        return self.out / C.CHECKPOINT_NAME

    def wall(self) -> float:
        return self.wall_before + (time.perf_counter() - self.started)

    def save(self, payload: dict[str, Any]) -> None:
        if self.dist.main:
            C.save(self.ckpt_path, {**payload, "config": self.cfg.to_dict(), "rng": C.rng_state(),
                                    "wall_seconds": self.wall(), "world_size": self.dist.world})
        self.dist.barrier()

    def _steps_for(self, n_train: int) -> tuple[int, int]:
        cfg = self.cfg
        per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
        if cfg.steps is None:
            cfg.steps = max(1, math.ceil(cfg.epochs * per_epoch)) if cfg.epochs is not None else DEFAULT_STEPS
        if cfg.fp32_steps is None:
            cfg.fp32_steps = cfg.steps if self.data.kind == "synthetic" else 0
        if cfg.lr is None:
            cfg.lr = DISTILL_LR if self.data.distill else LABELLED_LR
        return cfg.steps, per_epoch

    def _eval_every(self, total: int, per_epoch: int) -> int:
        if self.cfg.eval_every is not None:
            return self.cfg.eval_every
        return max(per_epoch, math.ceil(total / MAX_EVALS_PER_PHASE))

    # ------------------------------------------------------------------ entry

    def execute(self) -> dict[str, Any]:
        ckpt = self._open_checkpoint()
        if ckpt is not None:
            stored = RunConfig.from_dict(ckpt["config"])
            self._check_resume_config(stored)
            stored.eval_limit = self.cfg.eval_limit
            self.cfg = stored
            self.h, self.w = stored.input_size
            self.wall_before = float(ckpt.get("wall_seconds", 0.0))
            C.set_rng_state(ckpt["rng"])
            self.base = {k: ckpt[k] for k in ("base_state", "base_weights", "base_sha256")}
            self.log(f"resuming {self.ckpt_path}: phase {ckpt['phase']}, step {ckpt['step']} "
                     f"({self.wall_before:.0f} s so far)")
        cfg = self.cfg
        self.data = D.load_data(cfg.data, height=self.h, width=self.w, num_classes=self.entry.num_classes,
                                eval_limit=cfg.eval_limit)
        _, per_epoch = self._steps_for(len(self.data.train))
        if ckpt is None:
            state, path, sha = _base_weights(cfg, self.entry)
            self.base = {"base_state": state, "base_weights": path, "base_sha256": sha}
            torch.manual_seed(cfg.seed)
            np.random.seed(cfg.seed % 2**32)
        self.log(f"{cfg.model} -> {cfg.backend} int8 at {self.h}x{self.w}; data {cfg.data}: "
                 f"{len(self.data.train)} training items, {len(self.data.heldout_inputs)} held-out inputs; "
                 f"fp32 phase {cfg.fp32_steps} steps, QAT {cfg.steps} steps of {cfg.batch_size} "
                 f"({self.dist.world} process{'es' if self.dist.enabled else ''})")
        base_state = self.base["base_state"]
        if self.data.distill:
            teacher = G.trainable_deployable(_reference(self.entry, base_state), self.entry, self.h, self.w).eval()
            object.__setattr__(self.data, "heldout_labels", E.teacher_labels(teacher, self.data.heldout_inputs))
            self.coverage = self._class_coverage(teacher)
            if self.coverage["absent_from_training"]:
                self.log(f"warning: the held-out crops show {', '.join(self.coverage['absent_from_training'])}, "
                         "which the teacher finds in none of the training photos; QAT cannot learn to keep "
                         "those classes, yet they count in the held-out mIoU (see class_coverage in "
                         f"{METRICS_NAME}). Add photos that show them.")
        phase = ckpt["phase"] if ckpt else ("fp32" if cfg.fp32_steps else "qat")
        history = list(ckpt.get("history", [])) if ckpt else []
        if phase == "done":
            return self._finished(ckpt)
        if phase == "fp32":
            fp32_state, history = self._fp32_phase(ckpt, base_state, history, per_epoch)
            self.fp32_weights_file = str(self.out / FP32_WEIGHTS_NAME)
            ckpt = None
        else:
            fp32_state = ckpt["fp32_state"] if ckpt else base_state
            self.fp32_weights_file = ckpt.get("fp32_weights_file") if ckpt else None
        return self._qat_phase(ckpt, fp32_state, base_state, history, per_epoch)

    def _open_checkpoint(self) -> dict[str, Any] | None:
        exists = self.ckpt_path.exists()
        if self.resume:
            if not exists:
                raise UserError(f"--resume: no checkpoint at {self.ckpt_path}")
            return C.load(self.ckpt_path)
        if exists:
            raise UserError(f"{self.ckpt_path} exists; pass --resume to continue it or choose another --out")
        return None

    def _check_resume_config(self, stored: RunConfig) -> None:
        given = self.cfg
        for f in dataclasses.fields(RunConfig):
            if f.name in RESUME_FREE:
                continue
            if f.name not in self.given and f.name not in ("model", "backend"):
                continue
            a, b = getattr(given, f.name), getattr(stored, f.name)
            if a is None or a == b or (f.name == "input_size" and tuple(a) == tuple(b or ())):
                continue
            raise UserError(f"--resume: --{f.name.replace('_', '-')} is {a!r} but the checkpoint was started with "
                            f"{b!r}; drop the option or start a new run")

    # ------------------------------------------------------------------ data and evaluation

    def _class_coverage(self, teacher: nn.Module) -> dict[str, Any]:
        """The teacher's confident classes on the training photos (cut as held-out photos are) and held-out crops."""
        views = D.training_views(self.data, seed=self.cfg.seed, count=COVERAGE_PHOTOS, height=self.h, width=self.w)
        return E.class_coverage(E.teacher_labels(teacher, views), self.data.heldout_labels, self.entry.data.classes)

    def _unscored(self) -> float:
        return float(np.mean(self.data.heldout_labels == D.IGNORE))

    def _teacher(self, teacher_state: dict[str, torch.Tensor]) -> nn.Module:
        t = G.trainable_deployable(_reference(self.entry, teacher_state), self.entry, self.h, self.w).eval()
        for p in t.parameters():
            p.requires_grad_(False)
        return t.to(self.dist.device)

    def _batch(self, phase: str, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = D.batch(self.data, seed=self.cfg.seed, phase=phase, step=step, global_batch=self.cfg.batch_size,
                       rank=self.dist.rank, world=self.dist.world, height=self.h, width=self.w)
        return _to_device(x, self.dist), None if y is None else _to_device(y, self.dist)

    def _loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
              teacher: nn.Module | None) -> torch.Tensor:
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x)
            return distill_loss(logits, t, self.cfg, self.dist, float(self.cfg.batch_size * self.h * self.w))
        loss, _ = label_loss(logits, y, self.dist)
        return loss

    def _train_step(self, net: nn.Module, opt: torch.optim.Optimizer, teacher: nn.Module | None, phase: str,
                    step: int, total: int, base_lr: float) -> float:
        """One optimizer step of ``phase`` at the scheduled learning rate; the loss averaged over processes."""
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, total, base_lr)
        x, y = self._batch(phase, step)
        loss = self._loss(net(x), x, y, teacher)
        if phase == "qat" and self.dist.enabled:
            G.sync_observers(getattr(net, "module", net))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return self.dist.sum(loss.item()) / self.dist.world

    def _heldout(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.heldout_inputs, self.data.heldout_labels

    def _score_module(self, module: nn.Module) -> dict[str, float]:
        x, y = self._heldout()
        return E.scores(E.predict(module, x), y, self.entry.num_classes)

    def _progress(self, total: int, initial: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, disable=not self.progress, dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr)

    # ------------------------------------------------------------------ fp32 phase

    def _fp32_phase(self, ckpt, base_state, history, per_epoch):
        cfg, dist = self.cfg, self.dist
        model = NormalizedReference(_reference(self.entry, base_state), self.entry)
        start = 0
        if ckpt is not None:
            model.model.load_state_dict(ckpt["fp32_state"])
            start = int(ckpt["step"])
        model.to(dist.device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.fp32_lr)
        if ckpt is not None and ckpt.get("optimizer"):
            opt.load_state_dict(ckpt["optimizer"])
        # The reference models hold a few parameters their forward never reads (the authors' code does too).
        net = self._ddp(model, find_unused=True)
        teacher = self._teacher(base_state) if self.data.distill else None
        total = cfg.fp32_steps
        eval_every = self._eval_every(total, per_epoch)
        bar = self._progress(total, start, "fp32")
        last = history[-1]["fp32_miou"] if history and history[-1].get("phase") == "fp32" else float("nan")
        window: list[float] = list(ckpt.get("loss_window", [])) if ckpt is not None else []
        for step in range(start, total):
            window.append(self._train_step(net, opt, teacher, "fp32", step, total, cfg.fp32_lr))
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{window[-1]:.4f}", miou=f"{last:.2f}")
            if done % eval_every == 0 or done == total:
                if dist.main:
                    model.eval()
                    last = self._score_module(model)["miou"]
                    model.train()
                    history.append({"phase": "fp32", "step": done, "fp32_miou": last,
                                    "train_loss": round(float(np.mean(window)), 5) if window else None,
                                    "wall_seconds": round(self.wall(), 1)})
                    bar.write(f"fp32 step {done}/{total}: held-out mIoU {last:.2f}")
                window.clear()
                dist.barrier()
            if done % self.checkpoint_every == 0 and done < total:
                self.save({"phase": "fp32", "step": done, "fp32_state": _cpu_state(model.model),
                           "qat_state": None, "optimizer": opt.state_dict(), "history": history,
                           "loss_window": list(window), **self.base})
        bar.close()
        fp32_state = _cpu_state(model.model)
        weights_file = self.out / FP32_WEIGHTS_NAME
        if dist.main:
            C.save_plain(weights_file, fp32_state)
            self.log(f"fp32 fine-tuned weights: {weights_file}")
        self.save({"phase": "qat", "step": 0, "fp32_state": fp32_state, "qat_state": None, "optimizer": None,
                   "history": history, "fp32_weights_file": str(weights_file), **self.base})
        return fp32_state, history

    def _ddp(self, module: nn.Module, *, find_unused: bool = False) -> nn.Module:
        if not self.dist.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.dist.local_rank] if self.dist.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True,
                                       find_unused_parameters=find_unused)

    # ------------------------------------------------------------------ QAT phase

    def _baselines(self, fp32_state) -> dict[str, Any]:
        """fp32 and PTQ int8 mIoU of the model QAT starts from (measured once, on the main process)."""
        cfg = self.cfg
        deployable = G.trainable_deployable(_reference(self.entry, fp32_state), self.entry, self.h, self.w).eval()
        fp32 = self._score_module(deployable)
        calibration = D.calibration_inputs(self.data, seed=cfg.seed, count=cfg.calibration_images,
                                           height=self.h, width=self.w)
        x, y = self._heldout()
        start = time.perf_counter()
        # Post-training int8 exactly as `convert` makes it: equalized on the calibration inputs.
        ptq_module = _export_deployable(fp32_state, self.entry, self.h, self.w)
        EQ.equalize_for_int8(ptq_module, torch.from_numpy(np.concatenate(calibration)))
        if G.RUNTIME[cfg.backend] is None or self.artifact_eval == "none":
            ptq = E.ptq_simulated_scores(cfg.backend, ptq_module, calibration, x, y, self.entry.num_classes)
            artifact = None
        else:
            path = self.out / f"ptq_int8{G.ARTIFACT_SUFFIX[cfg.backend]}"
            artifact = E.convert_int8(cfg.backend, ptq_module, path, calibration=calibration)
            ptq = E.artifact_scores(cfg.backend, path, x, y, self.entry.num_classes)
        self.log(f"baselines: fp32 mIoU {fp32['miou']:.2f} (pixel accuracy {fp32['pixel_acc']:.2f}%), "
                 f"PTQ int8 mIoU {ptq['miou']:.2f} (pixel accuracy {ptq['pixel_acc']:.2f}%) "
                 f"({len(calibration)} calibration inputs, {time.perf_counter() - start:.0f} s)")
        return {"fp32_miou": fp32["miou"], "ptq_int8_miou": ptq["miou"],
                "fp32_pixel_acc": fp32["pixel_acc"], "ptq_int8_pixel_acc": ptq["pixel_acc"],
                "fp32_miou_all": fp32["miou_all"], "ptq_int8_miou_all": ptq["miou_all"],
                "fp32_class_iou": fp32["class_iou"], "ptq_int8_class_iou": ptq["class_iou"],
                "ptq_artifact": artifact,
                "ptq_int8_from": "simulated" if artifact is None else "artifact",
                "calibration_inputs": len(calibration)}

    def _schedule(self, gm: torch.fx.GraphModule, step: int) -> None:
        """Observers on until observer_freeze x steps, BatchNorm statistics until bn_freeze x steps."""
        total = self.cfg.steps
        G.set_observers(gm, step < round(self.cfg.observer_freeze * total))
        bn_training = step < round(self.cfg.bn_freeze * total)
        if G.batchnorm_training(gm) != bn_training:
            G.set_batchnorm_training(gm, bn_training)

    def _evaluate_qat(self, gm, step: int, *, final: bool) -> dict[str, Any]:
        cfg = self.cfg
        x, y = self._heldout()
        record: dict[str, Any] = {"phase": "qat", "step": step, **E.qat_scores(gm, x, y, self.entry.num_classes)}
        want_artifact = self.artifact_eval == "all" or (final and self.artifact_eval == "final")
        if G.RUNTIME[cfg.backend] is not None and want_artifact:
            path = self.out / f"qat_int8{G.ARTIFACT_SUFFIX[cfg.backend]}"
            info = E.convert_int8(cfg.backend, _export_deployable(self.fp32_state, self.entry, self.h, self.w), path,
                                  qat_module=gm)
            artifact = E.artifact_scores(cfg.backend, path, x, y, self.entry.num_classes) or {}
            record["int8_miou"] = artifact.get("miou")
            record["int8_miou_all"] = artifact.get("miou_all")
            record["int8_pixel_acc"] = artifact.get("pixel_acc")
            record["int8_class_iou"] = artifact.get("class_iou")
            record["artifact"] = info
            record["int8_from"] = "artifact"
        else:
            # Core ML (no runtime here) or no artifact asked for: the fake-quant score, which equals the
            # PT2E-converted graph's (see qat_eval); metrics.json says which.
            record["int8_miou"] = record["fake_quant_miou"]
            record["int8_miou_all"] = record["fake_quant_miou_all"]
            record["int8_pixel_acc"] = record["fake_quant_pixel_acc"]
            record["int8_class_iou"] = record["fake_quant_class_iou"]
            record["int8_from"] = "fake-quant"
        if final and cfg.backend == "coreml":
            path = self.out / f"qat_int8{G.ARTIFACT_SUFFIX[cfg.backend]}"
            record["artifact"] = E.convert_int8(cfg.backend, _export_deployable(self.fp32_state, self.entry,
                                                                                self.h, self.w), path, qat_module=gm)
        record["wall_seconds"] = round(self.wall(), 1)
        return record

    def _qat_phase(self, ckpt, fp32_state, teacher_state, history, per_epoch):
        cfg, dist = self.cfg, self.dist
        self.fp32_state = fp32_state
        baselines = ckpt.get("baselines") if ckpt else None
        if baselines is not None and "fp32_miou_all" not in baselines:
            self.log("the checkpoint's baselines predate mIoU over labelled classes: measuring them again")
            baselines = None
        if baselines is None:
            if dist.main:
                baselines = self._baselines(fp32_state)
            baselines = _broadcast(baselines, dist)
        resuming = ckpt is not None and ckpt.get("qat_state") is not None
        calibration = None if resuming else torch.from_numpy(np.concatenate(D.calibration_inputs(
            self.data, seed=cfg.seed, count=cfg.calibration_images, height=self.h, width=self.w)))
        if resuming and "qat_graph" not in ckpt:
            raise UserError(f"{self.ckpt_path} lacks the QAT graph description (written by an older version); "
                            "start a new run")
        keep = ckpt["qat_graph"]["fp32_nodes"] if resuming else None
        prepared = G.prepare_qat(_reference(self.entry, fp32_state), self.entry, cfg.backend, self.h, self.w,
                                 equalize_on=calibration, keep_fp32=keep)
        qat_graph = {"fp32_nodes": list(prepared.report["fp32_nodes"])}
        gm = prepared.module
        if prepared.report["eps_restored"]:
            self.log(f"BatchNorm eps: {prepared.report['eps_restored']} of {prepared.report['batchnorms']} reset to "
                     f"1e-5 by the PT2E QAT conv-BN rewrite; restored to {prepared.report['eps']}")
        start = 0
        if resuming:
            _load_state(gm, ckpt["qat_state"], str(self.ckpt_path))
            start = int(ckpt["step"])
        else:
            t_cal = time.perf_counter()
            ranges = G.calibrate_activation_ranges(gm, calibration)
            self.log(f"activation ranges: {ranges} set from {len(calibration)} calibration inputs by histogram "
                     f"search, as post-training quantization does ({time.perf_counter() - t_cal:.0f} s)")
        if resuming:
            frozen = list(ckpt["qat_graph"].get("frozen", []))
        else:
            gains = G.high_gain_parameters(gm, cfg.max_trained_gain) if cfg.max_trained_gain else {}
            frozen = sorted(gains)
            if gains:
                self.log(f"not trained: {len(gains)} parameters of layers with gain above {cfg.max_trained_gain:g} "
                         f"(up to {max(gains.values()):.0f})")
        if G.freeze_parameters(gm, frozen) != len(frozen):
            raise UserError(f"{self.ckpt_path} lists untrained parameters the rebuilt graph lacks; it was written "
                            "by another version: start a new run")
        qat_graph["frozen"] = self.frozen = frozen
        gm.to(dist.device)
        self._schedule(gm, start)
        params = [p for _, p in G.trainable_parameters(gm)]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        if ckpt is not None and ckpt.get("optimizer") and ckpt.get("qat_state") is not None:
            opt.load_state_dict(ckpt["optimizer"])
        net = self._ddp(gm)
        teacher = self._teacher(teacher_state) if self.data.distill else None
        total = cfg.steps
        eval_every = self._eval_every(total, per_epoch)
        bar = self._progress(total, start, "qat")
        last = next((h["fake_quant_miou"] for h in reversed(history) if h.get("phase") == "qat"), float("nan"))

        window: list[float] = list(ckpt.get("loss_window", [])) if resuming else []

        def payload(step: int, phase: str = "qat") -> dict[str, Any]:
            return {"phase": phase, "step": step, "fp32_state": fp32_state, "qat_state": _cpu_state(gm),
                    "qat_graph": qat_graph, "loss_window": list(window),
                    "optimizer": opt.state_dict(), "history": history, "baselines": baselines,
                    "fp32_weights_file": self.fp32_weights_file, **self.base}

        if ckpt is None or ckpt.get("qat_state") is None:
            self.save(payload(start))  # baselines measured: never again, even after a crash
        for step in range(start, total):
            self._schedule(gm, step)
            window.append(self._train_step(net, opt, teacher, "qat", step, total, cfg.lr))
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{window[-1]:.4f}", miou=f"{last:.2f}")
            if (done % eval_every == 0 and done < total) and dist.main:
                record = self._evaluate_qat(gm, done, final=False)
                record["train_loss"] = round(float(np.mean(window)), 5)
                window.clear()
                history.append(record)
                last = record["fake_quant_miou"]
                bar.write(_format_record(record))
            if done % eval_every == 0 and done < total:
                dist.barrier()
            if done % self.checkpoint_every == 0 and done < total:
                self.save(payload(done))
        bar.close()
        self._schedule(gm, total)
        final = None
        if dist.main:
            final = self._evaluate_qat(gm, total, final=True)
            if window:
                final["train_loss"] = round(float(np.mean(window)), 5)
            history.append(final)
            self.log(_format_record(final))
        final = _broadcast(final, dist)
        self.save(payload(total, "done"))
        return self._write_metrics(baselines, final, history, prepared.report)

    def _finished(self, ckpt) -> dict[str, Any]:
        path = self.out / METRICS_NAME
        self.log(f"{self.ckpt_path} is complete (step {ckpt['step']}); metrics in {path}")
        if path.exists():
            return json.loads(path.read_text())
        history = list(ckpt.get("history", []))
        self.fp32_weights_file = ckpt.get("fp32_weights_file")
        final = next(h for h in reversed(history) if h.get("phase") == "qat")
        return self._write_metrics(ckpt["baselines"], final, history, {})

    def _write_metrics(self, baselines, final, history, report) -> dict[str, Any]:
        cfg = self.cfg
        fp32, ptq, qat = baselines["fp32_miou"], baselines["ptq_int8_miou"], final["int8_miou"]
        # Pixel accuracies are absent from checkpoints written before they were measured.
        acc = {"fp32": baselines.get("fp32_pixel_acc"), "ptq": baselines.get("ptq_int8_pixel_acc"),
               "qat": final.get("int8_pixel_acc")}
        metrics = {
            "model": cfg.model, "backend": cfg.backend, "convert_target": G.CONVERT_TARGET[cfg.backend],
            "data": cfg.data, "data_kind": self.data.kind, "input_size": list(cfg.input_size),
            "heldout": {"inputs": int(len(self.data.heldout_inputs)),
                        "labels": (f"teacher argmax (fp32 model) where its top probability >= "
                                   f"{E.TEACHER_CONFIDENCE}; {self._unscored():.1%} of pixels not scored")
                        if self.data.distill else "ground truth"},
            "fp32_miou": fp32, "ptq_int8_miou": ptq, "qat_int8_miou": qat,
            "qat_fake_quant_miou": final["fake_quant_miou"], "qat_fp32_miou": final["fp32_miou"],
            "gap_closed": _gap_closed(fp32, ptq, qat),
            "fp32_pixel_acc": acc["fp32"], "ptq_int8_pixel_acc": acc["ptq"], "qat_int8_pixel_acc": acc["qat"],
            "gap_closed_pixel_acc": _gap_closed(acc["fp32"], acc["ptq"], acc["qat"]),
            "miou_classes": "classes present in the held-out labels (metrics.miou_labelled); the *_miou_all "
                            "figures also average classes only predicted, at IoU 0",
            "fp32_miou_all": baselines.get("fp32_miou_all"), "ptq_int8_miou_all": baselines.get("ptq_int8_miou_all"),
            "qat_int8_miou_all": final.get("int8_miou_all"),
            "gap_closed_miou_all": _gap_closed(baselines.get("fp32_miou_all"), baselines.get("ptq_int8_miou_all"),
                                               final.get("int8_miou_all")),
            "int8_source": INT8_SOURCE[cfg.backend] if final.get("int8_from") == "artifact" or cfg.backend == "coreml"
            else ("simulated: PTQ as a PT2E quantize/dequantize graph in PyTorch, QAT as its fake-quantized "
                  "graph (identical to its PT2E conversion); artifact evaluation was turned off"),
            "steps": cfg.steps, "fp32_steps": cfg.fp32_steps, "batch_size": cfg.batch_size,
            "world_size": self.dist.world, "seed": cfg.seed, "lr": cfg.lr,
            "schedule": {"observers_frozen_at_step": round(cfg.observer_freeze * cfg.steps),
                         "batchnorm_frozen_at_step": round(cfg.bn_freeze * cfg.steps)},
            "wall_seconds": round(self.wall(), 1),
            "checkpoint": str(self.ckpt_path),
            "fp32_weights": self.fp32_weights_file,
            "convert_command": (f"python -m espnet_mobile.convert --model {cfg.model} --target "
                                f"{G.CONVERT_TARGET[cfg.backend]} --precision int8 --qat-checkpoint {self.ckpt_path}"
                                + (f" --weights {self.fp32_weights_file}" if self.fp32_weights_file else "")),
            "ptq_calibration_inputs": baselines.get("calibration_inputs"),
            "ptq_artifact": baselines.get("ptq_artifact"), "qat_artifact": final.get("artifact"),
            "class_iou": _class_table(self.entry.data.classes, baselines, final),
            "class_coverage": self.coverage,
            "untrained_parameters": list(self.frozen),
            "batchnorm": report, "history": history,
        }
        if self.dist.main:
            write_json_atomic(self.out / METRICS_NAME, metrics, default=str)
        return metrics


# --------------------------------------------------------------------------- small helpers


def _class_table(names: Any, baselines: dict[str, Any], final: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """IoU per held-out class, ``{class: {"fp32", "ptq_int8", "qat_int8"}}``; where the mIoU gap lies.

    None for runs whose baselines were measured before per-class IoU was recorded.
    """
    columns = {"fp32": baselines.get("fp32_class_iou"), "ptq_int8": baselines.get("ptq_int8_class_iou"),
               "qat_int8": final.get("int8_class_iou")}
    if any(v is None for v in columns.values()):
        return None
    return {names[int(c)]: {k: v.get(c) for k, v in columns.items()}
            for c in sorted(set().union(*columns.values()), key=int)}


def _gap_closed(fp32: float | None, ptq: float | None, qat: float | None) -> float | None:
    """Share of the fp32 - PTQ gap that QAT recovered; None when a figure is missing or there is no gap."""
    if fp32 is None or ptq is None or qat is None or abs(fp32 - ptq) < 1e-9:
        return None
    return round((qat - ptq) / (fp32 - ptq), 4)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


def _export_deployable(state: dict[str, torch.Tensor], entry: Any, h: int, w: int) -> nn.Module:
    """The standard (batch-1) deployable module, as convert builds it, for PTQ and as the request's module."""
    from espnet_mobile.deploy import make_deployable

    return make_deployable(_reference(entry, state), entry, height=h, width=w)


def _broadcast(obj: Any, dist: Dist) -> Any:
    if not dist.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _format_record(r: dict[str, Any]) -> str:
    text = f"qat step {r['step']}: held-out mIoU fp32 {r['fp32_miou']:.2f}, fake-quant {r['fake_quant_miou']:.2f}"
    if "artifact" in r and r.get("int8_miou") is not None:
        text += f", int8 artifact {r['int8_miou']:.2f}"
    if r.get("int8_pixel_acc") is not None:
        text += f"; int8 pixel accuracy {r['int8_pixel_acc']:.2f}%"
    return text


def default_out(cfg: RunConfig) -> Path:
    kind = cfg.data.split(":", 1)[0]
    return Path("qat_runs") / f"{cfg.model}_{cfg.backend}_{kind}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg, given = config_from_args(args)
        torch.set_num_threads(args.threads)
        dist = init_distributed()
        try:
            run = Run(cfg, args.out or default_out(cfg), dist, checkpoint_every=args.checkpoint_every,
                      artifact_eval=args.artifact_eval, progress=not args.no_progress, resume=args.resume,
                      given=given)
            metrics = run.execute()
            if dist.main:
                print(json.dumps({k: metrics[k] for k in ("fp32_miou", "ptq_int8_miou", "qat_int8_miou",
                                                          "gap_closed", "ptq_int8_pixel_acc", "qat_int8_pixel_acc",
                                                          "gap_closed_pixel_acc", "gap_closed_miou_all",
                                                          "wall_seconds")}))
                print(f"metrics: {run.out / METRICS_NAME}\nconvert: {metrics['convert_command']}")
        finally:
            if dist.enabled and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
