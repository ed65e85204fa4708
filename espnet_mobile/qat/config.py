"""A QAT run's settings: defaults with the measurements behind them, the command line, and the config that
checkpoints carry."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.base import DEFAULT_MAX_WEIGHT_GAIN
from espnet_mobile.errors import UserError
from espnet_mobile.preprocess import parse_input_size
from espnet_mobile.qat import graph as qat_graph
from espnet_mobile.qat.data import CLASS_WEIGHTS, SCALE_RANGE

DEFAULT_STEPS = 100


@dataclass(frozen=True)
class DataDefaults:
    """Training settings whose best value depends on what the data is; each is measured in docs/qat.md."""

    steps: int  # QAT steps when neither --steps nor --epochs is given
    lr: float  # Adam, cosine decay
    crop_scale: tuple[float, float]  # random zoom of training crops (1.0: the crop just covers the image)
    label_kd_weight: float  # with labels: weight of the KL term to the fp32 model
    class_weights: str  # one of CLASS_WEIGHTS


#: ``synthetic``: the model learns a task it was not trained on (an fp32 phase comes first). On it
#: (ESPNetv2 at 128x128, 400 fp32 steps to 77.46 mIoU, then 150 QAT steps of 8, BatchNorm frozen) the
#: int8 artifact scored 73.38 at lr 1e-4 and 77.35 at 3e-4.
NEW_TASK = DataDefaults(steps=DEFAULT_STEPS, lr=3e-4, crop_scale=SCALE_RANGE, label_kd_weight=0.0,
                        class_weights="none")
#: Labels of the dataset the published model was trained on (camvid:, cityscapes:, voc:): QAT fine-tunes a
#: converged model and must not pull it towards the training split. On CamVid val, 60 steps: zoomed crops,
#: labels alone and lr 1e-5 gave the int8 artifact 68.85 mIoU (PTQ 69.47, fp32 70.10); whole frames plus
#: the KL term 69.48; with ESPNet's class weights too 69.68 (KL weight 1) and 69.72 (KL weight 4). Those
#: settings at lr 1e-4 instead of 1e-5: XNNPACK 70.43, Core ML 70.38 (simulated), LiteRT 70.26 and, with
#: seed 1, 69.67 (PTQ 68.39); LiteRT had ended below the target at 1e-5 (69.00) and 3e-5 (69.56).
OWN_LABELS = DataDefaults(steps=60, lr=1e-4, crop_scale=(1.0, 1.0), label_kd_weight=4.0, class_weights="inverse-log")
#: ``distill:``: as with labels, whole frames and lr 1e-4. ``espnet_p_2_q_8_camvid`` on the CamVid train frames,
#: scored on val labels (PTQ gap 0.63-0.76 mIoU): ``gap_closed`` 0.51 and 0.82 (seeds 0, 1); zoomed crops at
#: 1e-5 gave -0.47. ``espnetv2_s_2.0_pascal_256x256`` on the 13 sample photos, against its teacher: the fp32
#: weights stayed nearer the teacher on whole frames at 1e-4 (98.09) than on zoomed crops at 1e-5 (96.46),
#: int8 98.11 against 98.43 (PTQ 98.38). (Zoomed crops at 1e-4 had drifted to 66 within 10 steps.)
DISTILL = DataDefaults(steps=60, lr=1e-4, crop_scale=(1.0, 1.0), label_kd_weight=0.0, class_weights="none")


def data_defaults(kind: str) -> DataDefaults:
    """The defaults for a ``--data`` kind (one of qat_data.DATA_KINDS)."""
    return {"synthetic": NEW_TASK, "distill": DISTILL}.get(kind, OWN_LABELS)


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
MAX_EVALS_PER_PHASE = 4
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
def int8_source(backend: str) -> str:
    """What the int8 figures of a run measure: the artifact on a runtime here, or a simulation."""
    b = qat_graph._backend(backend)
    primary = next((spec for spec in b.runtimes() if spec.primary), None)
    if primary is not None:
        return f"artifact: .{b.extension} run by {primary.label}"
    return (f"simulated: PT2E quantize/dequantize graph in PyTorch (no runtime here executes .{b.extension}); "
            "the artifact is converted and checked but not run")

# --------------------------------------------------------------------------- configuration


@dataclass
class RunConfig:
    """Everything that determines a run's numbers (stored in the checkpoint)."""

    model: str
    backend: str
    data: str = "synthetic"
    eval_data: str | None = None  # labelled KIND:DIR whose val split scores a distill: run
    input_size: tuple[int, int] | None = None
    steps: int | None = None
    epochs: float | None = None
    fp32_steps: int | None = None
    batch_size: int = 8
    lr: float | None = None  # None: data_defaults(kind) fills this and the three below
    fp32_lr: float = FP32_LR
    seed: int = 0
    weights: str | None = None
    observer_freeze: float = OBSERVER_FREEZE
    bn_freeze: float = BN_FREEZE
    temperature: float = TEMPERATURE
    kd_weight: float = KD_WEIGHT
    label_kd_weight: float | None = None
    crop_scale: tuple[float, float] | None = None
    class_weights: str | None = None
    eval_every: int | None = None
    eval_limit: int | None = 200
    calibration_images: int = CALIBRATION_IMAGES
    max_trained_gain: float = MAX_TRAINED_GAIN  # 0: train every parameter

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = None if self.input_size is None else list(self.input_size)
        d["crop_scale"] = None if self.crop_scale is None else list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d.setdefault("max_trained_gain", 0.0)  # checkpoints from before the option trained every layer
        # Checkpoints from before these options trained on zoomed crops, labels alone, unweighted.
        d.setdefault("crop_scale", SCALE_RANGE)
        d.setdefault("label_kd_weight", 0.0)
        d.setdefault("class_weights", "none")
        if d.get("input_size") is not None:
            d["input_size"] = tuple(d["input_size"])
        if d.get("crop_scale") is not None:
            d["crop_scale"] = tuple(d["crop_scale"])
        return cls(**d)


#: Settings that may differ on --resume without changing the numbers.
RESUME_FREE = ("eval_limit",)


def _parse_scale(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise UserError(f"--crop-scale must look like 1.0:1.75 (low:high), got {text!r}") from None
    if not 1.0 <= low <= high:
        raise UserError(f"--crop-scale needs 1.0 <= low <= high (1.0: the crop just covers the image), got {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_mobile.qat",
                                description="Quantization-aware fine-tuning for one backend.")
    p.add_argument("--model", required=True, help="zoo id, e.g. espnetv2_s_2.0_pascal_256x256")
    p.add_argument("--backend", required=True, choices=qat_graph.backends())
    p.add_argument("--data", default=None,
                   help="synthetic[:N] | cityscapes:DIR | voc:DIR | camvid:DIR | distill:DIR (default synthetic)")
    p.add_argument("--eval-data", default=None, metavar="KIND:DIR",
                   help="with distill: score on this labelled dataset's val split (camvid:DIR, cityscapes:DIR, "
                        "voc:DIR) instead of the teacher's labels of held-out photos; every photo then trains")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None,
                        help=f"QAT steps (default {OWN_LABELS.steps} with a dataset's labels, {DISTILL.steps} for "
                             f"distill:, {NEW_TASK.steps} for synthetic)")
    length.add_argument("--epochs", type=float, default=None, help="QAT epochs over the training split")
    p.add_argument("--fp32-steps", type=int, default=None,
                   help="fp32 fine-tuning steps before QAT (default: QAT's steps for synthetic, else 0)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size, split over processes (default 8)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"QAT learning rate (Adam, cosine decay; default {NEW_TASK.lr:g} for synthetic, "
                        f"{OWN_LABELS.lr:g} with a dataset's labels, {DISTILL.lr:g} for distill:)")
    p.add_argument("--fp32-lr", type=float, default=None, help=f"fp32 phase learning rate (default {FP32_LR:g})")
    p.add_argument("--out", type=Path, default=None, help="run folder (default qat_runs/<model>_<backend>_<kind>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--weights", default=None, help="fp32 checkpoint to start from (default: the published one)")
    p.add_argument("--input-size", default=None, metavar="HxW", help="training and artifact size (default: the zoo's)")
    p.add_argument("--eval-every", type=int, default=None, metavar="K",
                   help="evaluate the fake-quant model every K steps (default: every epoch, at most "
                        f"{MAX_EVALS_PER_PHASE} times per phase)")
    p.add_argument("--checkpoint-every", type=int, default=20, metavar="N", help="checkpoint every N steps")
    p.add_argument("--artifact-eval", choices=("all", "final", "none"), default="final",
                   help="convert and run the int8 artifact at every evaluation (all), only at the end (default), "
                        "or never")
    p.add_argument("--observer-freeze", type=float, default=None,
                   help=f"fraction of QAT steps after which observers stop (default {OBSERVER_FREEZE})")
    p.add_argument("--bn-freeze", type=float, default=None,
                   help=f"fraction of QAT steps after which BatchNorm statistics freeze (default {BN_FREEZE:g}: "
                        "frozen throughout)")
    p.add_argument("--temperature", type=float, default=None, help=f"distillation temperature (default {TEMPERATURE})")
    p.add_argument("--kd-weight", type=float, default=None,
                   help=f"weight of the distillation KL term (default {KD_WEIGHT})")
    p.add_argument("--label-kd-weight", type=float, default=None,
                   help=f"with labels, add this weight x the KL divergence to the fp32 model, which keeps QAT "
                        f"close to it (default {OWN_LABELS.label_kd_weight:g} with a dataset's labels, "
                        f"{NEW_TASK.label_kd_weight:g}: labels only, for synthetic)")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default=None,
                   help="weigh the label loss per class: inverse-log is ESPNet's own 1/ln(1.10 + class share of "
                        "the training pixels), which favours thin, rare classes; for distill: the share is the "
                        f"teacher's, on the training photos (default {OWN_LABELS.class_weights} with a dataset's "
                        f"labels, {NEW_TASK.class_weights} for synthetic and distill:)")
    p.add_argument("--crop-scale", default=None, metavar="LOW:HIGH",
                   help=f"random zoom of training crops, relative to the scale at which the image just covers "
                        f"the input; 1:1 trains on whole frames (default 1:1 with a dataset's labels and for "
                        f"distill:, {SCALE_RANGE[0]:g}:{SCALE_RANGE[1]:g} for synthetic)")
    p.add_argument("--max-trained-gain", type=float, default=None,
                   help=f"do not train BatchNorms (and their convs) whose gain exceeds this (default "
                        f"{MAX_TRAINED_GAIN:g}; 0 trains every parameter)")
    p.add_argument("--eval-limit", type=int, default=200,
                   help="score at most N held-out images: of a labelled dataset's val split, or of the "
                        "photos distill: holds out, each in its fixed views (default 200)")
    p.add_argument("--calibration-images", type=int, default=None,
                   help=f"training images (each also flipped) calibrating the PTQ baseline and the pyramid "
                        f"equalization (default {CALIBRATION_IMAGES})")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads per process (default 1: on a shared CPU more threads are slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


#: Options compared with the checkpoint on --resume when given (argparse default None = not given).
CONFIG_OPTIONS = ("data", "eval_data", "input_size", "steps", "epochs", "fp32_steps", "batch_size", "lr", "fp32_lr",
                  "seed", "weights", "observer_freeze", "bn_freeze", "temperature", "kd_weight", "label_kd_weight",
                  "crop_scale", "class_weights", "eval_every", "calibration_images", "max_trained_gain")


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
    if args.label_kd_weight is not None and args.label_kd_weight < 0:
        raise UserError(f"--label-kd-weight must be >= 0, got {args.label_kd_weight}")
    if args.label_kd_weight and (args.data or "").startswith("distill:"):
        raise UserError("--label-kd-weight adds distillation to a labelled run; a distill: run is distillation "
                        "already - use --kd-weight")
    if args.eval_data is not None and not (args.data or "").startswith("distill:"):
        raise UserError("--eval-data scores a distill: run on labels; a labelled --data is already scored on its "
                        "own val split - drop --eval-data")
    values = {name: getattr(args, name) for name in CONFIG_OPTIONS if name not in ("input_size", "crop_scale")}
    values["input_size"] = parse_input_size(args.input_size) if args.input_size else None
    values["crop_scale"] = _parse_scale(args.crop_scale) if args.crop_scale else None
    given = {name for name, v in values.items() if v is not None}
    cfg = RunConfig(model=args.model, backend=args.backend, eval_limit=args.eval_limit,
                    **{k: v for k, v in values.items() if v is not None})
    return cfg, given


def default_out(cfg: RunConfig) -> Path:
    kind = cfg.data.split(":", 1)[0]
    return Path("qat_runs") / f"{cfg.model}_{cfg.backend}_{kind}"


