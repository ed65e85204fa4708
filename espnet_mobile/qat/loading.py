"""Reading a QAT checkpoint back into the prepared graph it trained, for `convert --qat-checkpoint` (without
importing the trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from espnet_mobile.errors import UserError
from espnet_mobile.qat import checkpoint as qat_checkpoint
from espnet_mobile.qat import graph as qat_graph
from espnet_mobile.qat.config import FP32_WEIGHTS_NAME, RunConfig


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


def load_qat_module(path: str | Path) -> QATCheckpoint:
    """Rebuild the prepared graph of a QAT checkpoint with its trained state, ready to convert."""
    ckpt = qat_checkpoint.load(Path(path))
    cfg = RunConfig.from_dict(ckpt["config"])
    if ckpt.get("qat_state") is None:
        raise UserError(f"QAT checkpoint {path} is still in its fp32 phase (step {ckpt['step']}); "
                        "resume it with python -m espnet_mobile.qat --resume until QAT has started")
    from espnet_mobile.zoo import get_entry

    entry = get_entry(cfg.model)
    h, w = cfg.input_size
    keep = (ckpt.get("qat_graph") or {}).get("fp32_nodes", [])
    prepared = qat_graph.prepare_qat(_reference(entry, ckpt["fp32_state"]), entry, cfg.backend, h, w, keep_fp32=keep)
    _load_state(prepared.module, ckpt["qat_state"], str(path))
    qat_graph.set_batchnorm_training(prepared.module, False)
    fp32_weights = ckpt.get("fp32_weights_file")
    if fp32_weights and not Path(fp32_weights).is_file():  # the run folder was moved: look beside the checkpoint
        beside = Path(path).parent / FP32_WEIGHTS_NAME
        fp32_weights = str(beside) if beside.is_file() else None
    return QATCheckpoint(module=qat_graph.for_conversion(prepared.module), config=cfg, phase=ckpt["phase"],
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
        return qat_graph.convert_target(self.config.backend)


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


