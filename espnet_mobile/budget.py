"""Mixed precision by an accuracy budget: the fewest convolutions kept in float so int8 loses at most B points.

``convert --int8-budget POINTS`` measures post-training int8 on the budget's photos: mIoU
against labels when ``--eval-dataset`` is given, else argmax agreement with the fp32
model on photos of the model's domain (100% is no loss). When all-int8 loses more than
``POINTS``, the convolutions are ranked by the accuracy each recovers when it alone runs
in float (the simulation of :mod:`espnet_mobile.sensitivity`, on a subset of the photos),
and the most sensitive are put back in float one at a time until the simulated loss fits
the budget. The backend then keeps those layers in float (fp32 islands for XNNPACK and
LiteRT; Core ML computes its float parts in fp16), and the artifact itself is measured on
the same photos: it must meet the budget, or ``convert`` adds the next layers and tries
again, and in the end fails with how far it is rather than leaving a poor artifact.

Before ranking, every convolution is put in float at once: that is the most float
convolutions can recover. When even that misses the budget in simulation, the loss is in
the int8 tensors between convolutions (the input, sums, concatenations): nothing is
ranked (on a 512x1024 ESPNet the ranking alone takes half an hour), the artifact is
converted once with every convolution in float and measured, and it fails with both
figures unless the artifact does better than its simulation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from espnet_mobile.errors import UserError

if TYPE_CHECKING:
    from converters.range_refinement import RangeRefinement

#: Photos the per-layer ranking is simulated on (evenly spread over the budget's photos).
RANK_PHOTOS = 12
#: Conversions tried per artifact when the artifact loses more than its simulation did.
MAX_ATTEMPTS = 3


@dataclass
class BudgetData:
    """The photos a budget is measured on, as model inputs, with labels when the data has them."""

    inputs: list[torch.Tensor]  # each (1, 3, H, W), RGB [0, 1]
    labels: list[np.ndarray | None]
    description: str
    _scorer: Any = field(default=None, repr=False, compare=False)  # built once: reference masks cost a pass

    @property
    def metric(self) -> str:
        return "miou" if self.labels and all(label is not None for label in self.labels) else "agreement"

    def subset(self, count: int) -> BudgetData:
        if len(self.inputs) <= count:
            return self
        picks = sorted({round(i * (len(self.inputs) - 1) / max(1, count - 1)) for i in range(count)})
        return BudgetData([self.inputs[i] for i in picks], [self.labels[i] for i in picks],
                          f"{len(picks)} of {self.description}")


def budget_data(entry, height: int, width: int, *, eval_dataset: str | None, split: str, limit: int | None,
                photos: list[Path] | None, photos_description: str) -> BudgetData:
    """Labelled photos of ``eval_dataset`` (mIoU), or ``photos`` (agreement with fp32)."""
    from espnet_mobile.preprocess import preprocess

    if eval_dataset is not None:
        from espnet_mobile.evaluate import Inputs, parse_dataset

        spec = parse_dataset(eval_dataset, entry)
        pairs = list(Inputs(spec, split, limit, height, width))
        return BudgetData([torch.from_numpy(x).reshape(1, 3, height, width) for x, _ in pairs],
                          [label for _, label in pairs], f"{len(pairs)} {spec.kind} {split} photos")
    if not photos:
        raise UserError("--int8-budget needs photos to measure on: pass --eval-dataset KIND:DIR (mIoU) or "
                        "--images DIR (agreement with fp32), or set $ESPNET_MOBILE_IMAGES")
    from espnet_mobile.data.images import load_rgb

    inputs = [torch.from_numpy(preprocess(load_rgb(p), height, width)).reshape(1, 3, height, width)
              for p in photos]
    return BudgetData(inputs, [None] * len(inputs), photos_description)


def scorer_for(data: BudgetData, entry, reference: torch.nn.Module):
    """The scorer of ``data`` against ``reference`` (one per data: every caller passes the same fp32 model)."""
    from espnet_mobile.sensitivity import Scorer

    if data._scorer is None:
        scored = [i for i in range(entry.num_classes) if i != entry.data.void_index]
        data._scorer = Scorer(data.inputs, data.labels, entry.num_classes, scored, reference)
    return data._scorer


def points(scored, metric: str) -> float:
    """The figure a budget counts in: mIoU, or agreement with fp32 in percent."""
    return float(scored.miou if metric == "miou" else scored.agreement)


@dataclass
class Choice:
    """The layers one backend keeps in float, and what the simulation measured."""

    backend: str  # the PT2E quantizer's name (xnnpack, tflite, coreml)
    metric: str
    budget: float
    data: str
    images: int
    fp32: float
    int8_all: float  # simulated, every quantizable conv in int8
    simulated: float  # simulated, with ``layers`` in float
    layers: list[str] = field(default_factory=list)  # module paths, most sensitive first
    shares: list[float] = field(default_factory=list)  # each layer's share of the conv MACs
    ranked: list[tuple[str, float]] = field(default_factory=list)  # every layer (module, MAC share), best first
    seconds: float = 0.0
    ceiling: float | None = None  # simulated, every conv in float (only measured when all-int8 misses)
    quantizer: str | None = None  # the simulated quantizer, for a converter that keeps the best of several
    # more(target): add ranked layers until the simulated figure reaches ``target``; None once done
    more: Callable[[float], bool] | None = field(default=None, repr=False, compare=False)

    @property
    def every_conv(self) -> bool:
        """Even every conv in float missed the budget in simulation: all of them are in float, unranked."""
        return self.ceiling is not None and self.fp32 - self.ceiling > self.budget

    @property
    def macs_share(self) -> float:
        return min(1.0, float(sum(self.shares)))  # shares are rounded to 5 digits



def choose(quantizable: torch.nn.Module, reference: torch.nn.Module, backend: str,
           calibration: list[torch.Tensor], data: BudgetData, budget: float, entry,
           log: Callable[[str], None] = print, refine: RangeRefinement | None = None) -> Choice:
    """The fewest convs (most sensitive first) whose float execution keeps the simulated loss within ``budget``."""
    from tqdm import tqdm

    from espnet_mobile import sensitivity as S

    start = time.perf_counter()
    shape = tuple(data.inputs[0].shape)
    gm, info = S.quantized_graph(quantizable, backend, [c.reshape(shape) for c in calibration], refine=refine)
    if "quantizer" in info:
        log(f"int8 budget ({backend}): simulated with the converter's choice, {S.chosen_quantizer(info)}")
    metric = data.metric
    scorer = scorer_for(data, entry, reference)
    fp32 = points(scorer(reference), metric)
    int8_all = points(scorer(gm), metric)
    choice = Choice(backend, metric, budget, data.description, len(data.inputs), round(fp32, 4),
                    round(int8_all, 4), round(int8_all, 4), quantizer=info.get("quantizer"))
    log(f"int8 budget ({backend}): {_unit(metric)} fp32 {fp32:.2f}, all-int8 {int8_all:.2f} on "
        f"{data.description} (budget {budget:g} points)")
    state: dict[str, Any] = {"graph": gm, "rows": None}

    def more(target: float) -> bool:
        """Put the next most sensitive convs in float until the simulation reaches ``target``; False if none left."""
        if state["rows"] is None:  # the ranking, once, when the first layer is needed
            ranking = data.subset(RANK_PHOTOS)
            layers = S.conv_layers(gm)
            with tqdm(total=len(layers), desc=f"ranking {len(layers)} convs ({backend})", unit="layer",
                      leave=False, disable=None) as bar:
                ranking_started = time.perf_counter()

                def progress(done: int, total: int, _row) -> None:
                    bar.update(1)
                    if bar.disable and (done == total or done % max(1, total // 10) == 0):
                        # no terminal (a log file, CI): a line every tenth, as the ranking can take half an hour
                        log(f"  ranking convs ({backend}): {done}/{total} in float one at a time, "
                            f"{time.perf_counter() - ranking_started:.0f} s")

                _, rows = S.scan(gm, layers, scorer_for(ranking, entry, reference), rank=metric,
                                 progress=progress)
            state["rows"] = rows
            choice.ranked = [(r.module, float(r.macs_share)) for r in rows]
        rows = state["rows"]
        added = False
        while len(choice.layers) < len(rows):
            row = rows[len(choice.layers)]
            chosen = [r.node for r in rows[:len(choice.layers) + 1]]
            state["graph"] = S.with_layers_in_float(gm, chosen)  # together: adjacent float layers pass float
            choice.layers.append(row.module)
            choice.shares.append(float(row.macs_share))
            choice.simulated = round(points(scorer(state["graph"]), metric), 4)
            added = True
            log(f"  + {row.module} in float ({row.macs_share:.2%} of conv MACs): simulated {choice.simulated:.2f}")
            if choice.simulated >= target:
                break
        return added

    if fp32 - int8_all > budget:
        every = S.conv_layers(gm)
        choice.ceiling = round(points(scorer(S.with_layers_in_float(gm, [layer.node for layer in every])), metric), 4)
        log(f"  all {len(every)} convs in float: simulated {choice.ceiling:.2f}")
    if choice.every_conv:
        # No float set can reach the budget in simulation: skip the ranking, measure the ceiling itself.
        choice.layers = list(dict.fromkeys(layer.module for layer in every))
        choice.shares = [round(float(sum(la.share for la in every if la.module == m)), 5) for m in choice.layers]
        choice.simulated = choice.ceiling
        log(f"  that misses the budget too ({fp32 - choice.ceiling:.2f} points lost): no ranking; the artifact is "
            "converted with every conv in float and measured")
    else:
        choice.more = more
        if fp32 - int8_all > budget:
            more(fp32 - budget)
    choice.seconds = round(time.perf_counter() - start, 1)
    return choice


def _unit(metric: str) -> str:
    return "mIoU" if metric == "miou" else "agreement %"


def measure_artifact(target: str, delegate: str, path: Path, record: dict, data: BudgetData, entry,
                     reference: torch.nn.Module) -> tuple[float, str] | None:
    """The artifact's figure on the budget's photos and the runtime that ran it; None if nothing here runs it."""
    import converters
    from converters.base import close_runner

    specs = [s for s in converters.backend(target).runtimes() if s.applies(record) and s.status()[0]]
    if not specs:
        return None
    spec = next((s for s in specs if s.primary), specs[0])
    runner = spec.load(Path(path), record)
    try:
        scorer = scorer_for(data, entry, reference)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.asarray(runner(x.numpy()), dtype=np.float32))

        return points(scorer(run), data.metric), spec.name
    finally:
        close_runner(runner)


def manifest_entry(choice: Choice, measured: float | None, runtime: str | None) -> dict[str, Any]:
    """What the manifest's ``quantization.budget`` of an artifact records."""
    loss = None if measured is None else round(choice.fp32 - measured, 4)
    return {
        "points": choice.budget, "metric": choice.metric, "data": choice.data, "images": choice.images,
        "fp32": choice.fp32, "int8_all_simulated": choice.int8_all, "simulated": choice.simulated,
        "measured": None if measured is None else round(measured, 4), "runtime": runtime, "loss": loss,
        "met": loss is not None and loss <= choice.budget,
        "float_layers": list(choice.layers), "float_macs_share": round(choice.macs_share, 5),
        "simulated_quantizer": choice.quantizer,
    }


def describe_miss(label: str, choice: Choice, measured: float) -> str:
    loss = choice.fp32 - measured
    head = (f"{label} int8 misses --int8-budget {choice.budget:g}: it loses {loss:.2f} {_unit(choice.metric)} "
            f"points on {choice.data} ({loss - choice.budget:.2f} over) with {len(choice.layers)} convs in float "
            f"({choice.macs_share:.1%} of conv MACs)")
    if choice.every_conv:
        return (f"{head}, every convolution it has (all-int8 simulated {choice.fp32 - choice.int8_all:.2f} points "
                "lost). The rest is lost in the int8 tensors between convolutions (the input, sums, "
                f"concatenations), which float convolutions do not remove: allow at least {loss:.2f} points, "
                "fine-tune with python -m espnet_mobile.qat and convert with --qat-checkpoint, or convert to fp16 "
                "or fp32")
    return (f"{head}; allow more points, or fine-tune with python -m espnet_mobile.qat and convert with "
            "--qat-checkpoint")
