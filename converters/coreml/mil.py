"""Reading a converted ML program: its MIL operations, their counts and dtypes."""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from converters.base import (
    ConversionError,
)
from converters.coreml.toolchain import _OP_CONST, _require_coremltools

# --------------------------------------------------------------------------- MIL inspection


def _load_spec(model: Any) -> Any:
    ct = _require_coremltools()
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise ConversionError(f"no Core ML model at {path}")
        return ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if hasattr(model, "get_spec"):
        return model.get_spec()
    if hasattr(model, "mlProgram"):
        return model
    raise TypeError(f"expected an .mlpackage path, an MLModel or a Model spec, got {type(model).__name__}")


def _main_block(spec: Any, function: str = "main") -> Any:
    if spec.WhichOneof("Type") != "mlProgram":
        raise ConversionError(f"the Core ML model is a {spec.WhichOneof('Type')}, not an ML program")
    fn = spec.mlProgram.functions[function]
    if fn.opset in fn.block_specializations:
        return fn.block_specializations[fn.opset]
    return next(iter(fn.block_specializations.values()))


def _walk_ops(block: Any) -> Iterator[Any]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk_ops(inner)


def iter_mil_ops(mlpackage_or_model: Any, function: str = "main") -> Iterator[Any]:
    """Every MIL operation (protobuf ``Operation``) of ``function``, nested blocks included."""
    return _walk_ops(_main_block(_load_spec(mlpackage_or_model), function))


def mil_op_counts(mlpackage_or_model: Any, function: str = "main") -> dict[str, int]:
    """Number of MIL operations of each type in the ML program's ``function``.

    Accepts an ``.mlpackage`` path, an ``MLModel`` or a ``Model`` spec. ``const``
    operations (weights and literal operands) are counted under ``"const"``.
    """
    counts = Counter(op.type for op in iter_mil_ops(mlpackage_or_model, function))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def mil_dtype_counts(mlpackage_or_model: Any, function: str = "main", include_const: bool = True) -> dict[str, int]:
    """Number of MIL operation outputs of each element type (``fp16``, ``int8``, ...)."""
    ct = _require_coremltools()
    names = ct.proto.MIL_pb2.DataType.Name
    counts: Counter[str] = Counter()
    for op in iter_mil_ops(mlpackage_or_model, function):
        if op.type == _OP_CONST and not include_const:
            continue
        for out in op.outputs:
            if out.type.WhichOneof("type") == "tensorType":
                counts[names(out.type.tensorType.dataType).lower()] += 1
    return dict(counts)


def exported_op_counts(program: Any) -> dict[str, int]:
    """ATen operations of an exported program or graph module (``getitem`` excluded)."""
    gm = program.graph_module if hasattr(program, "graph_module") else program
    counts = Counter(
        str(n.target) for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem
    )
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))



def mil_op_types(models: Iterable[Any]) -> set[str]:
    """Union of the MIL op types used by several models (for a MIL interpreter's coverage)."""
    types: set[str] = set()
    for model in models:
        types.update(mil_op_counts(model))
    return types
