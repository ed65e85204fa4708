"""One QAT run: baselines (fp32, PTQ int8), an optional fp32 phase, QAT with evaluations and atomic
checkpoints, and metrics.json."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from espnet_mobile.deploy import equalize
from espnet_mobile.errors import UserError
from espnet_mobile.files import write_json_atomic
from espnet_mobile.qat import checkpoint as qat_checkpoint
from espnet_mobile.qat import data as qat_data
from espnet_mobile.qat import evaluate as qat_eval
from espnet_mobile.qat import graph as qat_graph
from espnet_mobile.qat.config import (
    CONFIG_OPTIONS,
    COVERAGE_PHOTOS,
    FP32_WEIGHTS_NAME,
    MAX_EVALS_PER_PHASE,
    METRICS_NAME,
    RESUME_FREE,
    RunConfig,
    data_defaults,
    int8_source,
)
from espnet_mobile.qat.distributed import Dist, _broadcast
from espnet_mobile.qat.loading import NormalizedReference, _load_state, _reference
from espnet_mobile.qat.losses import _to_device, distill_loss, label_and_teacher_loss, label_loss

# --------------------------------------------------------------------------- models


def _base_weights(cfg: RunConfig, entry: Any) -> tuple[dict[str, torch.Tensor], str, str]:
    """The fp32 starting weights: state dict, path, sha256."""
    from espnet_mobile.zoo.weights import load_into, load_state_dict, resolve_weights

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


# --------------------------------------------------------------------------- the run


class Run:
    """One training run: fp32 phase (optional), QAT phase, final scoring; resumable at any checkpoint."""

    def __init__(self, cfg: RunConfig, out: Path, dist: Dist, *, checkpoint_every: int = 20,
                 artifact_eval: str = "final", progress: bool = True, resume: bool = False,
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
        self.class_weight: torch.Tensor | None = None  # --class-weights inverse-log

    # ------------------------------------------------------------------ helpers

    @property
    def ckpt_path(self) -> Path:
        return self.out / qat_checkpoint.CHECKPOINT_NAME

    def wall(self) -> float:
        return self.wall_before + (time.perf_counter() - self.started)

    def save(self, payload: dict[str, Any]) -> None:
        if self.dist.main:
            qat_checkpoint.save(self.ckpt_path, {**payload, "config": self.cfg.to_dict(),
                                                 "rng": qat_checkpoint.rng_state(),
                                    "wall_seconds": self.wall(), "world_size": self.dist.world})
        self.dist.barrier()

    def _fill_defaults(self, n_train: int) -> tuple[int, int]:
        """Settings not given take the defaults of the data's kind; returns (QAT steps, steps per epoch)."""
        cfg = self.cfg
        per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
        defaults = data_defaults(self.data.kind)
        if cfg.steps is None:
            cfg.steps = max(1, math.ceil(cfg.epochs * per_epoch)) if cfg.epochs is not None else defaults.steps
        if cfg.fp32_steps is None:
            cfg.fp32_steps = cfg.steps if self.data.kind == "synthetic" else 0
        for name in ("lr", "crop_scale", "label_kd_weight", "class_weights"):
            if getattr(cfg, name) is None:
                setattr(cfg, name, getattr(defaults, name))
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
            qat_checkpoint.set_rng_state(ckpt["rng"])
            self.base = {k: ckpt[k] for k in ("base_state", "base_weights", "base_sha256")}
            self.log(f"resuming {self.ckpt_path}: phase {ckpt['phase']}, step {ckpt['step']} "
                     f"({self.wall_before:.0f} s so far)")
        cfg = self.cfg
        labels_kind = (cfg.eval_data or cfg.data).split(":", 1)[0]
        if labels_kind in ("cityscapes", "voc", "camvid") and labels_kind != self.entry.dataset:
            raise UserError(f"{cfg.model} predicts the {self.entry.data.title} classes, which {labels_kind} labels do "
                            f"not index; use {self.entry.dataset}:DIR labels or distill:DIR photos")
        self.data = qat_data.load_data(cfg.data, height=self.h, width=self.w, num_classes=self.entry.num_classes,
                                eval_limit=cfg.eval_limit, eval_data=cfg.eval_data)
        _, per_epoch = self._fill_defaults(len(self.data.train))
        if cfg.class_weights == "inverse-log" and not self.data.distill:
            self._set_class_weights(qat_data.class_weights(self.data, self.entry.num_classes), "training labels")
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
            teacher = qat_graph.trainable_deployable(_reference(self.entry, base_state), self.entry, self.h,
                                                     self.w).eval()
            if self.data.heldout_labels is None:  # no --eval-data: the teacher labels the held-out photos
                object.__setattr__(self.data, "heldout_labels",
                                   qat_eval.teacher_labels(teacher, self.data.heldout_inputs))
            self.coverage = self._class_coverage(teacher)
            if cfg.class_weights == "inverse-log":
                seen = self.coverage["train_pixels"]  # the teacher's confident pixels per class
                counts = np.array([seen.get(name, 0) for name in self.entry.data.classes], dtype=np.int64)
                self._set_class_weights(qat_data.inverse_log_weights(counts),
                                        "the teacher's confident labels of the training photos")
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
            return qat_checkpoint.load(self.ckpt_path)
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
        views = qat_data.training_views(self.data, seed=self.cfg.seed, count=COVERAGE_PHOTOS, height=self.h,
                                        width=self.w)
        return qat_eval.class_coverage(qat_eval.teacher_labels(teacher, views), self.data.heldout_labels,
                                       self.entry.data.classes)

    def _set_class_weights(self, weights: np.ndarray, source: str) -> None:
        self.class_weight = torch.from_numpy(weights).to(self.dist.device)
        self.log(f"class weights (inverse-log of the class share in {source}): "
                 + ", ".join(f"{name} {w:.2f}" for name, w in zip(self.entry.data.classes, weights, strict=False)))

    def _unscored(self) -> float:
        return float(np.mean(self.data.heldout_labels == qat_data.IGNORE))

    def _teacher(self, teacher_state: dict[str, torch.Tensor]) -> nn.Module:
        t = qat_graph.trainable_deployable(_reference(self.entry, teacher_state), self.entry, self.h, self.w).eval()
        for p in t.parameters():
            p.requires_grad_(False)
        return t.to(self.dist.device)

    def _batch(self, phase: str, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = qat_data.batch(self.data, seed=self.cfg.seed, phase=phase, step=step, global_batch=self.cfg.batch_size,
                       rank=self.dist.rank, world=self.dist.world, height=self.h, width=self.w,
                       scale_range=self.cfg.crop_scale)
        return _to_device(x, self.dist), None if y is None else _to_device(y, self.dist)

    def _loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
              teacher: nn.Module | None) -> torch.Tensor:
        pixels = float(self.cfg.batch_size * self.h * self.w)
        if teacher is None:
            return label_loss(logits, y, self.dist, self.class_weight)[0]
        with torch.no_grad():
            t = teacher(x)
        if y is None:
            return distill_loss(logits, t, self.cfg, self.dist, pixels, self.class_weight)
        return label_and_teacher_loss(logits, y, t, self.cfg, self.dist, pixels, self.class_weight)

    def _train_step(self, net: nn.Module, opt: torch.optim.Optimizer, teacher: nn.Module | None, phase: str,
                    step: int, total: int, base_lr: float) -> float:
        """One optimizer step of ``phase`` at the scheduled learning rate; the loss averaged over processes."""
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, total, base_lr)
        x, y = self._batch(phase, step)
        loss = self._loss(net(x), x, y, teacher)
        if phase == "qat" and self.dist.enabled:
            qat_graph.sync_observers(getattr(net, "module", net))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return self.dist.sum(loss.item()) / self.dist.world

    def _heldout(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.heldout_inputs, self.data.heldout_labels

    def _score_module(self, module: nn.Module) -> dict[str, float]:
        x, y = self._heldout()
        return qat_eval.scores(qat_eval.predict(module, x), y, self.entry.num_classes)

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
            qat_checkpoint.save_plain(weights_file, fp32_state)
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
        deployable = qat_graph.trainable_deployable(_reference(self.entry, fp32_state), self.entry, self.h,
                                                    self.w).eval()
        fp32 = self._score_module(deployable)
        calibration = qat_data.calibration_inputs(self.data, seed=cfg.seed, count=cfg.calibration_images,
                                           height=self.h, width=self.w)
        x, y = self._heldout()
        start = time.perf_counter()
        # Post-training int8 exactly as `convert` makes it: equalized on the calibration inputs.
        ptq_module = _export_deployable(fp32_state, self.entry, self.h, self.w)
        equalize.equalize_for_int8(ptq_module, torch.from_numpy(np.concatenate(calibration)))
        if qat_graph.artifact_runtime(cfg.backend) is None or self.artifact_eval == "none":
            ptq = qat_eval.ptq_simulated_scores(cfg.backend, ptq_module, calibration, x, y, self.entry.num_classes)
            artifact = None
        else:
            path = self.out / f"ptq_int8{qat_graph.artifact_suffix(cfg.backend)}"
            artifact = qat_eval.convert_int8(cfg.backend, ptq_module, path, calibration=calibration)
            ptq = qat_eval.artifact_scores(cfg.backend, path, x, y, self.entry.num_classes)
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
        qat_graph.set_observers(gm, step < round(self.cfg.observer_freeze * total))
        bn_training = step < round(self.cfg.bn_freeze * total)
        if qat_graph.batchnorm_training(gm) != bn_training:
            qat_graph.set_batchnorm_training(gm, bn_training)

    def _evaluate_qat(self, gm, step: int, *, final: bool) -> dict[str, Any]:
        cfg = self.cfg
        x, y = self._heldout()
        record: dict[str, Any] = {"phase": "qat", "step": step, **qat_eval.qat_scores(gm, x, y, self.entry.num_classes)}
        want_artifact = self.artifact_eval == "all" or (final and self.artifact_eval == "final")
        if qat_graph.artifact_runtime(cfg.backend) is not None and want_artifact:
            path = self.out / f"qat_int8{qat_graph.artifact_suffix(cfg.backend)}"
            info = qat_eval.convert_int8(cfg.backend, _export_deployable(self.fp32_state, self.entry, self.h,
                                                                         self.w), path,
                                  qat_module=gm)
            artifact = qat_eval.artifact_scores(cfg.backend, path, x, y, self.entry.num_classes) or {}
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
        if final and qat_graph.artifact_runtime(cfg.backend) is None:  # converted and checked, not run here
            path = self.out / f"qat_int8{qat_graph.artifact_suffix(cfg.backend)}"
            record["artifact"] = qat_eval.convert_int8(cfg.backend, _export_deployable(self.fp32_state, self.entry,
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
        calibration = None if resuming else torch.from_numpy(np.concatenate(qat_data.calibration_inputs(
            self.data, seed=cfg.seed, count=cfg.calibration_images, height=self.h, width=self.w)))
        if resuming and "qat_graph" not in ckpt:
            raise UserError(f"{self.ckpt_path} lacks the QAT graph description (written by an older version); "
                            "start a new run")
        keep = ckpt["qat_graph"]["fp32_nodes"] if resuming else None
        prepared = qat_graph.prepare_qat(_reference(self.entry, fp32_state), self.entry, cfg.backend, self.h, self.w,
                                 equalize_on=calibration, keep_fp32=keep)
        graph_info = {"fp32_nodes": list(prepared.report["fp32_nodes"])}
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
            ranges = qat_graph.calibrate_activation_ranges(gm, calibration)
            self.log(f"activation ranges: {ranges} set from {len(calibration)} calibration inputs by histogram "
                     f"search, as post-training quantization does ({time.perf_counter() - t_cal:.0f} s)")
        if resuming:
            frozen = list(ckpt["qat_graph"].get("frozen", []))
        else:
            gains = qat_graph.high_gain_parameters(gm, cfg.max_trained_gain) if cfg.max_trained_gain else {}
            frozen = sorted(gains)
            if gains:
                self.log(f"not trained: {len(gains)} parameters of layers with gain above {cfg.max_trained_gain:g} "
                         f"(up to {max(gains.values()):.0f})")
        if qat_graph.freeze_parameters(gm, frozen) != len(frozen):
            raise UserError(f"{self.ckpt_path} lists untrained parameters the rebuilt graph lacks; it was written "
                            "by another version: start a new run")
        graph_info["frozen"] = self.frozen = frozen
        gm.to(dist.device)
        self._schedule(gm, start)
        params = [p for _, p in qat_graph.trainable_parameters(gm)]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        if ckpt is not None and ckpt.get("optimizer") and ckpt.get("qat_state") is not None:
            opt.load_state_dict(ckpt["optimizer"])
        net = self._ddp(gm)
        # distill: the published model teaches; with labels the model QAT starts from (after any fp32 phase) does.
        teacher = (self._teacher(teacher_state) if self.data.distill
                   else self._teacher(fp32_state) if cfg.label_kd_weight else None)
        total = cfg.steps
        eval_every = self._eval_every(total, per_epoch)
        bar = self._progress(total, start, "qat")
        last = next((h["fake_quant_miou"] for h in reversed(history) if h.get("phase") == "qat"), float("nan"))

        window: list[float] = list(ckpt.get("loss_window", [])) if resuming else []

        def payload(step: int, phase: str = "qat") -> dict[str, Any]:
            return {"phase": phase, "step": step, "fp32_state": fp32_state, "qat_state": _cpu_state(gm),
                    "qat_graph": graph_info, "loss_window": list(window),
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
            warning = artifact_gap_warning(artifact_gap(final), cfg.backend)
            if warning:
                self.log(warning)
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
            "model": cfg.model, "backend": cfg.backend, "convert_target": qat_graph.convert_target(cfg.backend),
            "data": cfg.data, "data_kind": self.data.kind, "input_size": list(cfg.input_size),
            "heldout": {"inputs": int(len(self.data.heldout_inputs)),
                        "labels": (f"teacher argmax (fp32 model) where its top probability >= "
                                   f"{qat_eval.TEACHER_CONFIDENCE}; {self._unscored():.1%} of pixels not scored")
                        if self.data.distill and self.data.eval_data is None
                        else f"ground truth ({self.data.eval_data or cfg.data} val)"},
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
            "int8_source": int8_source(cfg.backend) if final.get("int8_from") == "artifact"
                           or qat_graph.artifact_runtime(cfg.backend) is None
            else ("simulated: PTQ as a PT2E quantize/dequantize graph in PyTorch, QAT as its fake-quantized "
                  "graph (identical to its PT2E conversion); artifact evaluation was turned off"),
            "crop_scale": list(cfg.crop_scale), "label_kd_weight": cfg.label_kd_weight,
            "class_weights": cfg.class_weights,
            "steps": cfg.steps, "fp32_steps": cfg.fp32_steps, "batch_size": cfg.batch_size,
            "world_size": self.dist.world, "seed": cfg.seed, "lr": cfg.lr,
            "schedule": {"observers_frozen_at_step": round(cfg.observer_freeze * cfg.steps),
                         "batchnorm_frozen_at_step": round(cfg.bn_freeze * cfg.steps)},
            "wall_seconds": round(self.wall(), 1),
            "checkpoint": str(self.ckpt_path),
            "fp32_weights": self.fp32_weights_file,
            "convert_command": (f"python -m espnet_mobile.convert --model {cfg.model} --target "
                                f"{qat_graph.convert_target(cfg.backend)} --precision int8 "
                                f"--qat-checkpoint {self.ckpt_path}"
                                + (f" --weights {self.fp32_weights_file}" if self.fp32_weights_file else "")),
            "ptq_calibration_inputs": baselines.get("calibration_inputs"),
            "ptq_artifact": baselines.get("ptq_artifact"), "qat_artifact": final.get("artifact"),
            "artifact_minus_fake_quant": artifact_gap(final),
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


#: Held-out points (pixel accuracy or mIoU) by which the artifact may trail the graph it was converted from
#: before QAT warns: the ExecuTorch artifacts score within 0.1 of their fake-quant graphs.
ARTIFACT_GAP_WARN_POINTS = 2.0


def artifact_gap(final: dict[str, Any]) -> dict[str, float] | None:
    """Artifact minus fake-quant graph on the held-out data, at the final step; None if no artifact ran.

    The fake-quant graph is what training optimized; the artifact is what ships. They should differ
    only in how the backend's kernels round, which a sensitive network can still turn into a large
    loss (a LiteRT run of ``espnetc_p_2_q_8``: 82.73% simulated, 66.42% from the ``.tflite``).
    """
    if final.get("int8_from") != "artifact":
        return None
    gap = {}
    for metric in ("miou", "pixel_acc"):
        artifact, graph = final.get(f"int8_{metric}"), final.get(f"fake_quant_{metric}")
        if artifact is not None and graph is not None:
            gap[metric] = round(float(artifact) - float(graph), 4)
    return gap or None


def artifact_gap_warning(gap: dict[str, float] | None, backend: str) -> str | None:
    """A warning when the artifact trails its fake-quant graph by more than ARTIFACT_GAP_WARN_POINTS."""
    if not gap:
        return None
    worst = min(gap, key=gap.get)
    if gap[worst] >= -ARTIFACT_GAP_WARN_POINTS:
        return None
    name = {"miou": "mIoU", "pixel_acc": "pixel accuracy"}[worst]
    return (f"warning: the {backend} int8 artifact scores {-gap[worst]:.2f} points of held-out {name} below the "
            f"fake-quant graph it was converted from: the backend does not compute what training simulated "
            f"(its kernels round differently and this network amplifies that, or the conversion is at fault). "
            f"Judge the run by the artifact's figures and compare them with the PTQ artifact's "
            f"(metrics.json: artifact_minus_fake_quant; docs/qat.md)")


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


def _format_record(r: dict[str, Any]) -> str:
    text = f"qat step {r['step']}: held-out mIoU fp32 {r['fp32_miou']:.2f}, fake-quant {r['fake_quant_miou']:.2f}"
    if "artifact" in r and r.get("int8_miou") is not None:
        text += f", int8 artifact {r['int8_miou']:.2f}"
    if r.get("int8_pixel_acc") is not None:
        text += f"; int8 pixel accuracy {r['int8_pixel_acc']:.2f}%"
    return text


