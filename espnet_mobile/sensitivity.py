"""Per-layer int8 sensitivity: which convolution's quantization costs the most accuracy.

``python -m espnet_mobile.sensitivity --model ID --backend {xnnpack,tflite,coreml} --data camvid:DIR
[--split val] [--limit N] [--calibration-limit N] [--input-size HxW] [--top K] [--json PATH]``

The model is quantized the way ``convert`` does post-training int8 for the backend
(int8 equalization, then PT2E with the backend's quantizer and its automatic float
layers, calibrated on frames spread over the data's ``train`` split, each also mirrored), once;
for Core ML, whose converter calibrates with min/max and with histogram activation ranges, with
the one it keeps (the better agreement with float on the first 8 calibration inputs).
The converted PT2E graph simulates int8 in PyTorch (quantize/dequantize pairs around
float ops). Then, one convolution at a time, that layer is put back in float: its
weight is read unquantized and it computes in float from its int8 input; its output is
quantized again for the int8 layers that read it, as a backend's float layer is (only
layers in float together pass float tensors to each other). Each variant is scored on ``--limit`` photos of
``--split``: mIoU against the labels and argmax agreement with the fp32 deployable
graph. Layers are ranked by the mIoU they recover (by agreement with ``--rank
agreement``, or when the data has no labels); each row also gives the layer's share
of the model's multiply-accumulates, the cost of keeping it in float. Photos of a dataset
whose classes are not the model's (CamVid frames for a Cityscapes model) are scored by
agreement only.

This simulation is a guide, not an artifact (it computes in fp32 where Core ML uses
fp16, and with PyTorch's rounding). ``convert`` keeps the layers
you choose in float on ExecuTorch XNNPACK with ``int8_fp32_layers`` (module paths, as
printed here).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import converters
from converters.range_refinement import RangeRefinement, refine_activation_ranges
from espnet_mobile.errors import UserError, run_cli

RANKS = ("miou", "agreement")
DEFAULT_LIMIT = 20
DEFAULT_CALIBRATION = 32

_CONVS = {torch.ops.aten.conv2d.default, torch.ops.aten.conv_transpose2d.input}


def _is_quantize(node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and \
        getattr(node.target, "__name__", "").startswith("quantize_per_")


def _is_dequantize(node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and \
        getattr(node.target, "__name__", "").startswith("dequantize_per_")


def _float_source(node: Any) -> torch.fx.Node | None:
    """The float value behind ``dequantize(quantize(value))``, else None."""
    if _is_dequantize(node) and _is_quantize(node.args[0]):
        return node.args[0].args[0]
    return None


@dataclass
class Layer:
    """One convolution of the quantized graph."""

    node: str
    module: str
    macs: int
    share: float = 0.0  # of the model's convolution MACs


def conv_layers(gm: torch.fx.GraphModule) -> list[Layer]:
    """The convolutions of a converted PT2E graph whose weights are quantized, in graph order."""
    from converters.base import module_path

    layers = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _CONVS:
            continue
        if _float_source(node.args[1]) is None:
            continue  # already float (an automatic float layer)
        layers.append(Layer(node.name, module_path(node) or node.name, _macs(gm, node)))
    total = sum(layer.macs for layer in layers) or 1
    for layer in layers:
        layer.share = layer.macs / total
    return layers


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, torch.fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape"):
        return tuple(meta.shape)
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _macs(gm: torch.fx.GraphModule, node: torch.fx.Node) -> int:
    weight = _weight_tensor(gm, node.args[1])
    out, x = _shape(node), _shape(node.args[0])
    if weight is None or out is None or x is None:
        return 0
    if node.target == torch.ops.aten.conv_transpose2d.input:
        # every input pixel meets every weight of its group once
        return int(np.prod(x) * weight[0].numel())
    return int(np.prod(out) * weight[0].numel())


def _weight_tensor(gm: torch.fx.GraphModule, arg: Any) -> torch.Tensor | None:
    source = _float_source(arg)
    node = source if source is not None else arg
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    return None


#: Single-input elementwise ops a layer's output passes through before the next layer
#: (XNNPACK fuses ReLU into the conv and runs PReLU in float between two int8 roundings).
_ACTIVATIONS = {torch.ops.aten.relu.default, torch.ops.aten.relu_.default, torch.ops.aten.hardtanh.default,
                torch.ops.aten.prelu.default, torch.ops.aten.clamp.default}


def with_layer_in_float(gm: torch.fx.GraphModule, name: str) -> torch.fx.GraphModule:
    """A copy of ``gm`` in which convolution ``name`` alone runs in float (see :func:`with_layers_in_float`)."""
    return with_layers_in_float(gm, [name])


def with_layers_in_float(gm: torch.fx.GraphModule, names: Iterable[str]) -> torch.fx.GraphModule:
    """A copy of ``gm`` in which the convolutions ``names`` and their activations run in float.

    Each reads its weight unquantized and computes in float from its int8 input. Its
    output (through the activation that follows it) stays float only where another of
    ``names`` reads it, or where it is the model's output: every other reader is an int8 op, and a backend
    quantizes a float layer's output again for it (PT2E annotates each op's inputs). A run
    of adjacent float layers is therefore a float island; a single float layer between
    int8 ones recovers little more than its weights' rounding.
    """
    out = copy.deepcopy(gm)
    by_name = {n.name: n for n in out.graph.nodes}
    chosen = [by_name[name] for name in dict.fromkeys(names)]
    in_float = set(chosen)
    for node in chosen:
        source = _float_source(node.args[1])
        if source is not None:
            node.replace_input_with(node.args[1], source)

    def reads_in_float(consumer: torch.fx.Node, value: torch.fx.Node) -> bool:
        if consumer.op == "output":
            return True  # the logits: no reader to quantize them for
        if consumer.op != "call_function" or not consumer.args or consumer.args[0] is not value:
            return False
        return consumer in in_float or consumer.target in _ACTIVATIONS

    for node in chosen:
        todo = [node]
        while todo:
            current = todo.pop()
            for user in list(current.users):
                if _is_quantize(user):
                    for dq in [u for u in user.users if _is_dequantize(u)]:
                        for consumer in [c for c in dq.users if reads_in_float(c, dq)]:
                            consumer.replace_input_with(dq, current)
                            if consumer.target in _ACTIVATIONS:
                                todo.append(consumer)
                        if not dq.users:
                            out.graph.erase_node(dq)
                    if not user.users:
                        out.graph.erase_node(user)
                elif user.op == "call_function" and user.target in _ACTIVATIONS and user.args[0] is current:
                    todo.append(user)
    out.graph.eliminate_dead_code()
    out.recompile()
    return out


def quantized_graph(deployable: torch.nn.Module, backend: str, calibration: Sequence[torch.Tensor],
                    refine: RangeRefinement | None = None, log: Callable[[str], None] | None = None,
                    ) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """``deployable`` quantized for ``backend`` as ``convert`` does PTQ, as a converted PT2E graph.

    ``refine`` narrows activation ranges by the logit error after calibration, as the
    converters do when asked. A backend whose converter tries several quantizers (Core ML's
    min/max and histogram activation ranges) is simulated with the one it would keep: the
    wrong one put Core ML's simulation of the Cityscapes ESPNets 14-50 points below its artifacts.
    """
    import converters
    from converters.base import CHOICE_INPUTS, most_agreeing

    example = calibration[0]
    captured = torch.export.export(deployable.eval(), (example,), strict=False).module()
    try:
        chosen = converters.for_qat(backend)
    except converters.UnknownBackendError as err:
        raise UserError(str(err)) from None
    keep = chosen.qat_float_nodes(captured) if chosen.qat_float_nodes is not None else []

    def build(quantizer: Any) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
        return _calibrated(copy.deepcopy(captured), quantizer, keep, calibration, refine, log)

    if chosen.ptq_quantizers is None:
        gm, info = build(chosen.quantizer(False))
    else:
        quantizers = chosen.ptq_quantizers()
        name, gm, info, agreement = most_agreeing(list(quantizers), lambda n: build(quantizers[n]), deployable,
                                                  list(calibration[:CHOICE_INPUTS]))
        info.update(quantizer=name, quantizer_agreement=agreement)
    info["backend"] = backend
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(example)  # tensor shapes for the MAC counts
    return gm, info


def chosen_quantizer(info: dict[str, Any]) -> str:
    """The quantizer :func:`quantized_graph` kept, with the agreement of each it tried."""
    tried = ", ".join(f"{name} {value:.2f}%" for name, value in info["quantizer_agreement"].items())
    return f"{info['quantizer']} (agreement with float on the first calibration inputs: {tried})"


def _calibrated(captured: torch.fx.GraphModule, quantizer: Any, keep: Sequence[str],
                calibration: Sequence[torch.Tensor], refine: RangeRefinement | None,
                log: Callable[[str], None] | None) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """``captured`` prepared with ``quantizer`` (``keep`` left in float), calibrated and converted."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    info: dict[str, Any] = {}
    if keep:  # the nodes the converter keeps in float after calibration
        kept = frozenset(keep)
        quantizer.set_filter_function(lambda node: node.name not in kept)
        info["float_nodes"] = {name: _module_of_node(captured, name) for name in keep}
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    if getattr(quantizer, "float_islands", None):  # LiteRT decides its float islands after calibration
        info["float_nodes"] = {k: v["module"] for k, v in quantizer.float_islands.items()}
    if refine is not None:
        info["range_refinement"] = refine_activation_ranges(prepared, calibration, refine, log=log).as_dict()
    gm = convert_pt2e(prepared, fold_quantize=False)
    move_exported_model_to_eval(gm)
    return gm, info


@dataclass
class Scored:
    miou: float | None
    agreement: float


@dataclass
class Row:
    node: str
    module: str
    macs_share: float
    miou: float | None
    agreement: float
    miou_recovered: float | None
    agreement_recovered: float


@dataclass
class Scan:
    model: str
    backend: str
    data: str
    split: str
    images: int
    calibration_inputs: int
    input_size: list[int]
    fp32: Scored
    int8: Scored
    float_nodes: dict[str, str]
    rank: str
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    quantizer: str | None = None  # the one the converter keeps, for a backend that tries several


class Scorer:
    """mIoU against labels and agreement with the fp32 masks, over a fixed set of inputs."""

    def __init__(self, inputs: list[torch.Tensor], labels: list[np.ndarray | None], num_classes: int,
                 scored: list[int], reference: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.inputs, self.labels = inputs, labels
        self.num_classes, self.scored = num_classes, scored
        self.reference_masks = [self._mask(reference, x) for x in inputs]

    @staticmethod
    def _mask(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return run(x)[0].argmax(0).numpy().astype(np.uint8)

    @property
    def labelled(self) -> bool:
        return all(label is not None for label in self.labels)

    def __call__(self, run: Callable[[torch.Tensor], torch.Tensor]) -> Scored:
        from espnet_mobile import metrics as M
        from espnet_mobile.preprocess import resize_mask_nearest

        conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        agree = total = 0
        for x, label, ref in zip(self.inputs, self.labels, self.reference_masks, strict=True):
            mask = self._mask(run, x)
            agree += int(np.count_nonzero(mask == ref))
            total += mask.size
            if label is not None:
                conf += M.confusion(resize_mask_nearest(mask, *label.shape), label, self.num_classes)
        miou = None
        if self.labelled:
            ious = M.iou_per_class(conf)[self.scored]
            miou = float(np.nanmean(ious) * 100.0)
        return Scored(miou, agree / max(total, 1) * 100.0)


def scan(gm: torch.fx.GraphModule, layers: Iterable[Layer], scorer: Scorer, *, rank: str = "miou",
         progress: Callable[[int, int, Row], None] | None = None) -> tuple[Scored, list[Row]]:
    """Score ``gm`` and each variant with one of ``layers`` in float; rows ranked best first."""
    base = scorer(gm)
    layers = list(layers)
    rows = []
    for i, layer in enumerate(layers):
        s = scorer(with_layer_in_float(gm, layer.node))
        row = Row(layer.node, layer.module, round(layer.share, 5), s.miou, s.agreement,
                  None if s.miou is None or base.miou is None else s.miou - base.miou,
                  s.agreement - base.agreement)
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(layers), row)
    key = "miou_recovered" if rank == "miou" and base.miou is not None else "agreement_recovered"
    rows.sort(key=lambda r: (getattr(r, key), r.agreement_recovered), reverse=True)
    return base, rows


def _frames(spec: Any, split: str, limit: int | None, *, spread: bool = False) -> list[Path]:
    """Photos of ``split``: the first ``limit``, or with ``spread`` ``limit`` spread over the whole sorted
    list, as ``convert`` picks calibration frames (a dataset's frames come in runs of one sequence)."""
    from espnet_mobile import data
    from espnet_mobile.data.domain_photos import evenly
    from espnet_mobile.data.images import list_images

    if spec.kind == "images":
        photos = list_images(spec.path)
    else:
        photos = [img for _, img, _ in data.LAYOUTS[spec.kind](spec.path, split)]
    if limit is None:
        return photos
    return evenly(photos, limit) if spread else photos[:limit]


def run(args: argparse.Namespace, log=print) -> Scan:
    import espnet_mobile as em
    from espnet_mobile import data
    from espnet_mobile.convert import calibration_inputs
    from espnet_mobile.deploy import equalize, make_deployable
    from espnet_mobile.evaluate import Inputs
    from espnet_mobile.zoo import get_entry

    start = time.perf_counter()
    entry = get_entry(args.model)
    spec = data.parse_spec(args.data)
    if spec.kind == "synthetic":
        raise UserError("--data needs photos: camvid:DIR, cityscapes:DIR, voc:DIR or a folder of images")
    use_labels = spec.labelled and spec.kind == entry.dataset
    if spec.labelled and not use_labels:
        # Another dataset's labels cannot score this model, but its photos can (street frames for a
        # Cityscapes model): agreement with fp32 only.
        log(f"{entry.model_id} predicts the {entry.data.title} classes, not {spec.kind}'s: "
            f"its photos are scored by agreement with fp32 only")
    height, width = args.input_size or (entry.input_height, entry.input_width)
    model = em.create_model(entry.model_id, weights=args.weights or em.PRETRAINED)
    deployable = make_deployable(model, entry, height=height, width=width)

    calib_split = "train" if spec.kind != "images" else args.split
    calib, _ = calibration_inputs(_frames(spec, calib_split, args.calibration_limit, spread=True), height, width)
    quantizable = copy.deepcopy(deployable)
    equalize.equalize_for_int8(quantizable, torch.cat([c.reshape(1, 3, height, width) for c in calib]))
    log(f"{entry.model_id}: quantizing for {args.backend} at {height}x{width}, {len(calib)} calibration "
        f"inputs from {spec.kind} {calib_split}")
    refine = RangeRefinement() if args.int8_refine_ranges else None
    gm, info = quantized_graph(quantizable, args.backend, [c.reshape(1, 3, height, width) for c in calib],
                               refine=refine, log=log if args.verbose else None)
    if "quantizer" in info:
        log(f"{args.backend} quantizer: {chosen_quantizer(info)}")
    if refine is not None:
        r = info["range_refinement"]
        log(f"range refinement: {len(r['narrowed'])} activation ranges narrowed, logit MSE "
            f"{r['logit_mse_before']:.4g} -> {r['logit_mse_after']:.4g} ({r['seconds']:.0f} s)")

    if use_labels:
        pairs = list(Inputs(spec, args.split, args.limit, height, width))
        inputs = [torch.from_numpy(x) for x, _ in pairs]
        labels: list[np.ndarray | None] = [label for _, label in pairs]
    else:
        from espnet_mobile.data.images import load_rgb
        from espnet_mobile.preprocess import preprocess

        inputs = [torch.from_numpy(preprocess(load_rgb(p), height, width))
                  for p in _frames(spec, args.split, args.limit)]
        labels = [None] * len(inputs)
    if not inputs:
        raise UserError(f"no photos for split {args.split!r} in {spec.describe()}")
    scored = [i for i in range(entry.num_classes) if i != entry.data.void_index]
    scorer = Scorer(inputs, labels, entry.num_classes, scored, deployable)
    fp32 = scorer(deployable)
    layers = conv_layers(gm)
    if args.layers:
        wanted = set(args.layers)
        layers = [layer for layer in layers if layer.module in wanted or layer.node in wanted]
    log(f"fp32 {_fmt(fp32)}; scanning {len(layers)} convolutions on {len(inputs)} {spec.kind} {args.split} photos")

    def progress(i: int, n: int, row: Row) -> None:
        log(f"  [{i}/{n}] {row.module:<40} mIoU {_num(row.miou)}  agreement {row.agreement:6.2f}")

    base, rows = scan(gm, layers, scorer, rank=args.rank, progress=progress if args.verbose else None)
    result = Scan(entry.model_id, args.backend, spec.describe(), args.split, len(inputs), len(calib),
                  [height, width], fp32, base, info.get("float_nodes", {}),
                  "miou" if args.rank == "miou" and base.miou is not None else "agreement", rows,
                  round(time.perf_counter() - start, 1), info.get("quantizer"))
    return result


def _num(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:6.2f}"


def _fmt(s: Scored) -> str:
    return f"mIoU {_num(s.miou).strip()}, agreement {s.agreement:.2f}%"


def format_table(result: Scan, top: int | None = None) -> str:
    rows = result.rows[:top] if top else result.rows
    lines = [
        f"{result.model} {result.backend} int8 sensitivity on {result.images} {result.data} {result.split} "
        f"photos ({result.input_size[0]}x{result.input_size[1]}; {result.calibration_inputs} calibration inputs)",
        f"fp32: {_fmt(result.fp32)}   int8 (all layers): {_fmt(result.int8)}",
        f"ranked by {result.rank} recovered with the layer in float",
        f"{'#':>3}  {'layer (module path)':<42} {'node':<18} {'MACs %':>7} {'mIoU':>7} {'+mIoU':>7} "
        f"{'agree %':>8} {'+agree':>7}",
    ]
    for i, r in enumerate(rows, 1):
        plus_miou = "    n/a" if r.miou_recovered is None else f"{r.miou_recovered:+7.2f}"
        lines.append(f"{i:>3}  {r.module:<42} {r.node:<18} {r.macs_share * 100:7.2f} {_num(r.miou):>7} "
                     f"{plus_miou} {r.agreement:8.2f} {r.agreement_recovered:+7.2f}")
    if result.float_nodes:
        lines.append(f"already float (automatic): {', '.join(sorted(set(result.float_nodes.values())))}")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from None
    return h, w


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m espnet_mobile.sensitivity",
                                description="Rank convolutions by the accuracy int8 loses in each.")
    p.add_argument("--model", required=True, help="zoo id")
    p.add_argument("--backend", choices=converters.qat_names(), default="xnnpack",
                   help="PT2E quantizer (default xnnpack)")
    p.add_argument("--data", required=True, help="camvid:DIR, cityscapes:DIR, voc:DIR or a folder of photos")
    p.add_argument("--split", default="val", help="split scored (default val); calibration uses train")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"photos scored (default {DEFAULT_LIMIT})")
    p.add_argument("--calibration-limit", type=int, default=DEFAULT_CALIBRATION,
                   help=f"calibration frames, each also mirrored (default {DEFAULT_CALIBRATION})")
    p.add_argument("--input-size", type=_size, default=None, help="HxW (default: the zoo's)")
    p.add_argument("--weights", default=None, help="checkpoint (default: the published one)")
    p.add_argument("--layers", nargs="*", default=None, help="scan only these module paths or node names")
    p.add_argument("--rank", choices=RANKS, default="miou", help="what a layer recovers (default miou)")
    p.add_argument("--top", type=int, default=None, help="print only the first K rows")
    p.add_argument("--json", type=Path, default=None, help="write the whole scan here")
    p.add_argument("--verbose", action="store_true", help="one line per layer as it is scored")
    p.add_argument("--int8-refine-ranges", action="store_true",
                   help="narrow activation ranges by the logit error first, as convert --int8-refine-ranges")
    args = p.parse_args(argv)
    for name in ("limit", "calibration_limit"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _module_of_node(gm: torch.fx.GraphModule, name: str) -> str:
    from converters.base import module_path

    node = next((n for n in gm.graph.nodes if n.name == name), None)
    return module_path(node) if node is not None else ""


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_args(argv)
        result = run(args, log=lambda m: print(m, file=sys.stderr, flush=True))
        print(format_table(result, args.top))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(asdict(result), indent=1) + "\n")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

