"""Activation ranges chosen by the error they cause at the model's output, not in their own tensor.

After calibration, each activation observer's range minimizes the rounding error of its
own tensor (the histogram observer) or covers every value seen (min/max). A heavy-tailed
tensor then gets a range set by its rarest values: in `espnetv2_s_1.0_city_512x256` the first
EESP branch's output, calibrated on frames of several CamVid sequences, got +-37 where its
values have a standard deviation near 1, and int8 agreement with fp32 fell from 97% to 59%
(docs/quantization.md). Clipping such a tail costs little; coarse steps over the bulk cost a lot.

:func:`refine_activation_ranges` runs the prepared PT2E graph with every observer replaced by
the fake quantization it stands for, and for the activation ranges widest against their
tensor's spread, tries a few narrower ranges in turn, keeping each only when it lowers the
mean squared error of the logits against the float graph on the calibration inputs. The
chosen ranges are then fixed on the observers, so ``convert_pt2e`` writes them into the
quantized graph and every backend that quantizes with PT2E gets the same refinement.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from converters.base import module_path


@dataclass(frozen=True)
class RangeRefinement:
    """How hard to search: the widest ``candidates`` ranges, each tried at ``factors`` of its width."""

    candidates: int = 40
    factors: tuple[float, ...] = (0.8, 0.64, 0.5, 0.4)
    inputs: int = 8  # calibration inputs the output error is measured on (spread over them)


@dataclass
class _Observed:
    """One activation observer (shared by every tensor it observes) and its quantization."""

    module: Any
    label: str
    scale: float
    zero_point: int
    quant_min: int
    quant_max: int
    factor: float = 1.0
    sum: float = 0.0
    sum_sq: float = 0.0
    count: int = 0

    @property
    def width(self) -> float:
        return (self.quant_max - self.quant_min) * self.scale

    @property
    def std(self) -> float:
        if self.count == 0:
            return 0.0
        mean = self.sum / self.count
        return max(self.sum_sq / self.count - mean * mean, 0.0) ** 0.5

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale * self.factor, self.zero_point, self.quant_min, self.quant_max)

    def record(self, x: torch.Tensor) -> torch.Tensor:
        xd = x.detach().double()
        self.sum += float(xd.sum())
        self.sum_sq += float((xd * xd).sum())
        self.count += xd.numel()
        return x


@dataclass
class RefinementReport:
    inputs: int
    observers: int
    tried: int
    error_before: float
    error_after: float
    narrowed: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "observers": self.observers, "tried": self.tried,
                "logit_mse_before": round(self.error_before, 6), "logit_mse_after": round(self.error_after, 6),
                "narrowed": self.narrowed, "seconds": round(self.seconds, 1)}


#: ``ConversionRequest.options`` key that turns refinement on (``convert --int8-refine-ranges``).
OPTION = "int8_refine_ranges"


def from_options(options: dict[str, Any] | None) -> RangeRefinement | None:
    """The refinement a conversion's options ask for, or None."""
    value = (options or {}).get(OPTION)
    if not value:
        return None
    return value if isinstance(value, RangeRefinement) else RangeRefinement()


def _is_observer(module: Any) -> bool:
    return callable(getattr(module, "calculate_qparams", None)) and hasattr(module, "dtype") \
        and module.dtype in (torch.int8, torch.uint8) and not getattr(module, "is_dynamic", False)


def _limits(module: Any) -> tuple[int, int]:
    info = torch.iinfo(module.dtype)
    qmin = module.quant_min if module.quant_min is not None else info.min
    qmax = module.quant_max if module.quant_max is not None else info.max
    return int(qmin), int(qmax)


def _weight_fake_quant(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    scale, zero_point = module.calculate_qparams()
    qmin, qmax = _limits(module)
    if scale.numel() > 1:
        axis = int(getattr(module, "ch_axis", 0))
        zp = zero_point.to(torch.int32)
        return lambda w: torch.fake_quantize_per_channel_affine(w, scale.float(), zp, axis, qmin, qmax)
    s, z = float(scale), int(zero_point)
    return lambda w: torch.fake_quantize_per_tensor_affine(w, s, z, qmin, qmax)


def _observers(prepared: torch.fx.GraphModule) -> tuple[list[_Observed], dict[int, Any]]:
    """The activation observers (one entry per module, however many tensors share it) and the weight ones."""
    activations: dict[int, _Observed] = {}
    weights: dict[int, Any] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        module = prepared.get_submodule(node.target)
        if not _is_observer(module):
            continue
        source = node.args[0] if node.args else None
        if isinstance(source, torch.fx.Node) and source.op == "get_attr":
            weights[id(module)] = module
            continue
        if id(module) in activations:
            continue
        scale, zero_point = module.calculate_qparams()
        if scale.numel() != 1:
            continue
        qmin, qmax = _limits(module)
        path = module_path(source) if isinstance(source, torch.fx.Node) else ""
        label = f"{source.name if isinstance(source, torch.fx.Node) else node.name}" + (f" ({path})" if path else "")
        activations[id(module)] = _Observed(module, label, float(scale), int(zero_point), qmin, qmax)
    return list(activations.values()), weights


def _set_forward(modules: Sequence[Any], make: Callable[[Any], Callable[[torch.Tensor], torch.Tensor]]) -> None:
    for module in modules:
        module.forward = make(module)


def _restore_forward(modules: Sequence[Any]) -> None:
    for module in modules:
        module.__dict__.pop("forward", None)


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output


def refine_activation_ranges(prepared: torch.fx.GraphModule, inputs: Sequence[torch.Tensor],
                             config: RangeRefinement | None = None,
                             log: Callable[[str], None] | None = None) -> RefinementReport:
    """Narrow the activation ranges of a calibrated PT2E ``prepared`` graph where that lowers the logit error.

    ``inputs`` are model inputs (calibration data); ``config.inputs`` of them, spread evenly,
    are used. Afterwards every activation observer returns fixed quantization parameters
    (the refined ones), which ``convert_pt2e`` writes into the graph; observers are no longer
    updated by a forward pass.
    """
    config = config or RangeRefinement()
    start = time.perf_counter()
    if not inputs:
        raise ValueError("range refinement needs at least one calibration input")
    count = min(config.inputs, len(inputs))
    picks = sorted({round(i * (len(inputs) - 1) / max(1, count - 1)) for i in range(count)})
    samples = [inputs[i] for i in picks]

    observed, weights = _observers(prepared)
    by_module = {id(o.module): o for o in observed}
    weight_modules = list(weights.values())
    all_modules = [o.module for o in observed] + weight_modules

    # Float reference, and each activation's spread (identity observers that record).
    _set_forward(all_modules, lambda m: (by_module[id(m)].record if id(m) in by_module else (lambda x: x)))
    try:
        with torch.no_grad():
            references = [_logits(prepared(x)).detach().clone() for x in samples]
    finally:
        _restore_forward(all_modules)

    weight_fq = {id(m): _weight_fake_quant(m) for m in weight_modules}

    def error() -> float:
        with torch.no_grad():
            total = 0.0
            for x, ref in zip(samples, references, strict=True):
                total += float(torch.mean((_logits(prepared(x)) - ref) ** 2))
        return total / len(samples)

    _set_forward(all_modules, lambda m: by_module[id(m)].fake_quant if id(m) in by_module else weight_fq[id(m)])
    try:
        before = best = error()
        ranked = sorted((o for o in observed if o.std > 0), key=lambda o: o.width / o.std, reverse=True)
        tried = ranked[: config.candidates]
        for i, obs in enumerate(tried, 1):
            kept = obs.factor
            for factor in sorted(config.factors, reverse=True):
                obs.factor = factor
                e = error()
                if e >= best:
                    break  # the error grows as the range narrows past its best: stop there
                best, kept = e, factor
            obs.factor = kept
            if log is not None and kept != 1.0:
                log(f"  range refinement [{i}/{len(tried)}] {obs.label}: x{kept:g}, logit MSE {best:.4g}")
    finally:
        _restore_forward(all_modules)

    for obs in observed:
        scale = torch.tensor([obs.scale * obs.factor], dtype=torch.float32)
        zero_point = torch.tensor([obs.zero_point], dtype=torch.int32)
        obs.module.calculate_qparams = (lambda s=scale, z=zero_point: (s, z))
        obs.module.forward = lambda x: x  # fixed from now on: later passes must not move the range
    return RefinementReport(len(samples), len(observed), len(tried), before, best,
                            {o.label: o.factor for o in observed if o.factor != 1.0},
                            time.perf_counter() - start)
