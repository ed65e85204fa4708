"""A numpy reference interpreter for the Core ML ML programs this project writes.

There is no Core ML runtime on Linux, so a ``.mlpackage`` could otherwise only
be inspected, never executed. This module reads the package's MIL program
(the protobuf spec coremltools loads, plus the weight blobs in
``Data/com.apple.CoreML/weights/weight.bin``) and evaluates it op by op with
numpy, following the op definitions of the MIL opsets (iOS15..iOS17) as
coremltools documents them. It is a *reference* for what the program says,
not the Core ML runtime: Apple's CPU, GPU and Neural Engine kernels may
accumulate, round and fuse differently.

Numerics (what is and is not emulated):

* Every value has the element type the program declares for it (fp32, fp16,
  int8, uint8, int32, bool). Each op reads its inputs as stored, computes in
  float32 (float64 for the few sums that do not depend on the data, such as
  interpolation weights) and rounds its result once to the declared output
  type. For an fp16 program that is "fp16 storage between ops, fp32 inside an
  op": convolution and matrix products accumulate in fp32 and round to fp16 at
  the end, like a device with fp32 accumulators. Per-multiply fp16 rounding,
  fp16 accumulation and op fusion are *not* emulated.
* ``quantize`` computes ``input / scale`` in fp32, rounds half to even
  (``numpy.rint``, as coremltools' own constant folding does) and saturates
  to the target type's range; ``dequantize`` and
  ``constexpr_affine_dequantize`` compute ``(q - zero_point) * scale`` in
  fp32 and round to the scale's type. PyTorch's PT2E reference multiplies by
  ``1 / scale`` instead and sums in another order, so a value within an
  ulp of a rounding boundary can land one level apart; in a deep int8 graph
  such isolated flips propagate (the per-op tests are exact).
* Float to float16 conversion rounds to nearest even and overflows to inf,
  as IEEE fp16 hardware does.

Operations covered: const, cast, conv, conv_transpose, linear, prelu, leaky_relu, relu,
sigmoid, add, mul, concat, transpose, reshape, reduce_mean, avg_pool,
upsample_bilinear, batch_norm, quantize, dequantize and
constexpr_affine_dequantize. Any other operation, or an option of these that
is not implemented (such as ``ceil_mode`` pooling), is rejected when the
program is loaded with an error that names it - never approximated.

    program = MILProgram("model.mlpackage")
    logits = program(x)                      # the first output for one input
    outs = program.run({"image": x}, keep=True)
    program.values["conv2d_5"]               # any intermediate by MIL var name
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.base import RuntimeSpec
from converters.coreml.mil_numerics import (
    MILError,
    UnsupportedMILOp,
    _broadcast_along,
    _conv2d,
    _conv_transpose2d,
    _f32,
    _interp_matrix,
    _ints,
    _scalar,
    _spatial_pads,
    _taps,
)

LABEL = "MIL reference interpreter, not the Core ML runtime"

BLOB_SENTINEL = 0xDEADBEEF

# MIL DataType enum name -> numpy dtype (names from coremltools.proto.MIL_pb2.DataType).
_NP_DTYPES: dict[str, Any] = {
    "FLOAT16": np.float16,
    "FLOAT32": np.float32,
    "FLOAT64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}
# Strings used by cast's and quantize's dtype operands.
_DTYPE_NAMES: dict[str, Any] = {
    "fp16": np.float16,
    "fp32": np.float32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "bool": np.bool_,
}


# --------------------------------------------------------------------------- loading values


@dataclass
class _TensorType:
    dtype: Any  # numpy dtype, or str for STRING
    shape: tuple[int, ...] | None  # None when a dimension is not a constant


def _tensor_type(value_type: Any, where: str) -> _TensorType:
    from coremltools.proto import MIL_pb2

    kind = value_type.WhichOneof("type")
    if kind != "tensorType":
        raise UnsupportedMILOp(f"{where}: values of type {kind!r} are not supported (only tensors)")
    tt = value_type.tensorType
    name = MIL_pb2.DataType.Name(tt.dataType)
    if name == "STRING":
        dtype: Any = str
    elif name in _NP_DTYPES:
        dtype = _NP_DTYPES[name]
    else:
        raise UnsupportedMILOp(f"{where}: element type {name} is not supported")
    dims: list[int] | None = []
    for d in tt.dimensions:
        if d.WhichOneof("dimension") != "constant":
            dims = None
            break
        dims.append(int(d.constant.size))
    shape = None if dims is None else tuple(dims)
    if shape is not None and tt.rank != len(shape):
        shape = None
    return _TensorType(dtype, shape)


class _Blobs:
    """Reader for the weight file of an ML program (the MIL blob storage format, version 2).

    The file starts with a 64-byte header (blob count, version); every blob is
    preceded by 64 bytes of metadata: sentinel 0xDEADBEEF (u32), data type
    (u32), size in bytes (u64), offset of the data (u64). A ``BlobFileValue``
    points at the metadata.
    """

    def __init__(self, weights_dir: Path | None) -> None:
        self.weights_dir = weights_dir
        self._files: dict[Path, np.ndarray] = {}

    def read(self, file_name: str, offset: int, ttype: _TensorType, where: str) -> np.ndarray:
        if self.weights_dir is None:
            raise MILError(f"{where}: the program refers to {file_name} but the package has no weights folder")
        path = self.weights_dir / file_name.split("/")[-1]
        buf = self._files.get(path)
        if buf is None:
            if not path.is_file():
                raise MILError(f"{where}: weight file {path} does not exist")
            buf = np.memmap(path, dtype=np.uint8, mode="r")
            self._files[path] = buf
        sentinel, _dtype_code = np.frombuffer(buf, dtype="<u4", count=2, offset=offset)
        if int(sentinel) != BLOB_SENTINEL:
            raise MILError(f"{where}: no blob metadata at offset {offset} of {path.name}")
        size, data_offset = (int(v) for v in np.frombuffer(buf, dtype="<u8", count=2, offset=offset + 8))
        if ttype.shape is None or ttype.dtype is str:
            raise MILError(f"{where}: a weight blob needs a numeric type with a fixed shape")
        dtype = np.dtype(ttype.dtype).newbyteorder("<")
        count = int(np.prod(ttype.shape, dtype=np.int64))
        if size != count * dtype.itemsize:
            raise MILError(f"{where}: blob holds {size} bytes, the declared {ttype.shape} {dtype} needs "
                           f"{count * dtype.itemsize}")
        data = np.frombuffer(buf, dtype=dtype, count=count, offset=data_offset)
        return np.array(data.reshape(ttype.shape), dtype=ttype.dtype)


def _load_value(value: Any, blobs: _Blobs, where: str) -> Any:
    """A MIL ``Value`` (immediate or blob) as a numpy array of its declared type, or a str."""
    ttype = _tensor_type(value.type, where)
    which = value.WhichOneof("value")
    if which == "blobFileValue":
        return blobs.read(value.blobFileValue.fileName, int(value.blobFileValue.offset), ttype, where)
    if which != "immediateValue":
        raise UnsupportedMILOp(f"{where}: value kind {which!r} is not supported")
    imm = value.immediateValue
    if imm.WhichOneof("value") != "tensor":
        raise UnsupportedMILOp(f"{where}: immediate {imm.WhichOneof('value')!r} values are not supported")
    tensor = imm.tensor
    field_name = tensor.WhichOneof("value")
    if ttype.dtype is str:
        strings = list(tensor.strings.values)
        return strings[0] if ttype.shape in ((), None) and len(strings) == 1 else strings
    if field_name == "bytes":
        raw = tensor.bytes.values
        arr = np.frombuffer(raw, dtype=np.dtype(ttype.dtype).newbyteorder("<")).astype(ttype.dtype)
    elif field_name in ("floats", "ints", "bools", "longInts", "doubles"):
        arr = np.array(list(getattr(tensor, field_name).values)).astype(ttype.dtype)
    elif field_name is None:
        arr = np.zeros(0, dtype=ttype.dtype)
    else:
        raise UnsupportedMILOp(f"{where}: tensor field {field_name!r} is not supported")
    if ttype.shape is not None:
        arr = arr.reshape(ttype.shape)
    return arr


# --------------------------------------------------------------------------- program structure


@dataclass
class MILOp:
    type: str
    outputs: list[str]
    output_types: list[_TensorType]
    # operand name -> list of ("var", name) or ("value", constant)
    inputs: dict[str, list[tuple[str, Any]]]
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.outputs[0] if self.outputs else self.type


@dataclass
class TraceEntry:
    """One op's output during a run, in program order."""

    name: str  # MIL var name
    op_type: str
    inputs: list[str]  # MIL var names of the op's tensor operands (constants left out)
    value: np.ndarray


# --------------------------------------------------------------------------- interpreter


class MILProgram:
    """One function of an ML program, ready to run with numpy.

    ``path`` is an ``.mlpackage`` (or ``.mlmodel``) path, or a coremltools
    ``MLModel``. ``values`` holds the last run's intermediates (MIL var name ->
    array) when that run was made with ``keep=True``.
    """

    def __init__(self, path: Any, function: str = "main") -> None:
        spec, weights_dir = _read_spec(path)
        if spec.WhichOneof("Type") != "mlProgram":
            raise MILError(f"the model is a {spec.WhichOneof('Type')}, not an ML program")
        if function not in spec.mlProgram.functions:
            raise MILError(f"the ML program has no function {function!r} "
                           f"(has {', '.join(spec.mlProgram.functions)})")
        fn = spec.mlProgram.functions[function]
        block = fn.block_specializations[fn.opset] if fn.opset in fn.block_specializations \
            else next(iter(fn.block_specializations.values()))
        self.opset = fn.opset
        self.input_types = {i.name: _tensor_type(i.type, f"input {i.name}") for i in fn.inputs}
        self.block_outputs = list(block.outputs)
        described = [o.name for o in spec.description.output]
        self.output_names = described if len(described) == len(self.block_outputs) else list(self.block_outputs)
        blobs = _Blobs(weights_dir)
        self.constants: dict[str, Any] = {}
        self.ops: list[MILOp] = []
        self.var_types: dict[str, _TensorType] = dict(self.input_types)
        for op in block.operations:
            self._add_op(op, blobs)
        self._check_supported()
        self.compute_precision = "fp16" if any(
            t.dtype is np.float16 for op in self.ops for t in op.output_types) else "fp32"
        self._last_use = self._last_uses()
        self.values: dict[str, np.ndarray] = {}
        self.trace: list[TraceEntry] = []

    # ------------------------------------------------------------------ parsing

    def _add_op(self, op: Any, blobs: _Blobs) -> None:
        outputs = [o.name for o in op.outputs]
        where = f"{op.type} -> {', '.join(outputs) or '?'}"
        if len(op.blocks):
            raise UnsupportedMILOp(f"MIL operation {op.type!r} ({where}) has nested blocks; control flow "
                                   "is not supported by the MIL reference interpreter")
        out_types = [_tensor_type(o.type, where) for o in op.outputs]
        if op.type == "const":
            self.constants[outputs[0]] = _load_value(op.attributes["val"], blobs, where)
            self.var_types[outputs[0]] = out_types[0]
            return
        attributes = {k: _load_value(v, blobs, f"{where}, attribute {k}")
                      for k, v in op.attributes.items() if k != "name"}
        inputs: dict[str, list[tuple[str, Any]]] = {}
        for key, arg in op.inputs.items():
            bound = []
            for binding in arg.arguments:
                if binding.WhichOneof("binding") == "name":
                    bound.append(("var", binding.name))
                else:
                    bound.append(("value", _load_value(binding.value, blobs, f"{where}, operand {key}")))
            inputs[key] = bound
        mop = MILOp(op.type, outputs, out_types, inputs, attributes)
        if op.type.startswith("constexpr_"):  # decompressed once, at load time
            impl = _CONSTEXPR.get(op.type)
            if impl is None:
                raise UnsupportedMILOp(f"MIL operation {op.type!r} ({where}) is not supported by the MIL "
                                       "reference interpreter")
            value = impl(mop)
            self.constants[outputs[0]] = _to_type(value, out_types[0], where)
            self.var_types[outputs[0]] = out_types[0]
            return
        for name, t in zip(outputs, out_types, strict=True):
            self.var_types[name] = t
        self.ops.append(mop)

    def _check_supported(self) -> None:
        unknown: dict[str, str] = {}
        for op in self.ops:
            if op.type not in _OPS:
                unknown.setdefault(op.type, op.name)
        if unknown:
            listed = ", ".join(f"{t!r} (first at {n})" for t, n in unknown.items())
            raise UnsupportedMILOp(f"MIL operation(s) not supported by the MIL reference interpreter: {listed}")
        for op in self.ops:
            check = _CHECKS.get(op.type)
            if check is not None:
                check(self, op)

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for index, op in enumerate(self.ops):
            for bound in op.inputs.values():
                for kind, ref in bound:
                    if kind == "var":
                        last[ref] = index
        for name in self.block_outputs:
            last[name] = len(self.ops)
        return last

    # ------------------------------------------------------------------ running

    def operand(self, op: MILOp, key: str, default: Any = None, env: dict | None = None) -> Any:
        """The value of one operand (the first argument), or ``default`` when absent."""
        bound = op.inputs.get(key)
        if not bound:
            return default
        return self._resolve(bound[0], env)

    def operands(self, op: MILOp, key: str, env: dict | None = None) -> list[Any]:
        return [self._resolve(b, env) for b in op.inputs.get(key, [])]

    def _resolve(self, binding: tuple[str, Any], env: dict | None) -> Any:
        kind, ref = binding
        if kind == "value":
            return ref
        if ref in self.constants:
            return self.constants[ref]
        if env is not None and ref in env:
            return env[ref]
        raise MILError(f"MIL var {ref!r} is used before it is defined")

    def const_operand(self, op: MILOp, key: str, default: Any = None) -> Any:
        """An operand that must be a compile-time constant (used by the load-time checks)."""
        bound = op.inputs.get(key)
        if not bound:
            return default
        kind, ref = bound[0]
        if kind == "value":
            return ref
        if ref in self.constants:
            return self.constants[ref]
        raise UnsupportedMILOp(f"{op.type} ({op.name}): operand {key!r} must be a constant, it is {ref!r}")

    def run(self, feeds: dict[str, np.ndarray], keep: bool = False,
            on_value: Callable[[TraceEntry], None] | None = None) -> dict[str, np.ndarray]:
        """Outputs by name; with ``keep`` every intermediate stays in ``self.values`` and ``self.trace``."""
        env: dict[str, Any] = {}
        for name, ttype in self.input_types.items():
            if name not in feeds:
                raise MILError(f"missing input {name!r} (inputs: {', '.join(self.input_types)})")
            env[name] = _to_type(np.asarray(feeds[name]), ttype, f"input {name}")
        self.values = dict(env) if keep else {}
        self.trace = []
        for index, op in enumerate(self.ops):
            try:
                results = _OPS[op.type](self, op, env)
            except (UnsupportedMILOp, MILError):
                raise
            except Exception as err:
                raise MILError(f"{op.type} ({op.name}) failed: {type(err).__name__}: {err}") from err
            if not isinstance(results, tuple):
                results = (results,)
            for name, ttype, value in zip(op.outputs, op.output_types, results, strict=True):
                value = _to_type(value, ttype, f"{op.type} -> {name}")
                env[name] = value
                if keep or on_value is not None:
                    entry = TraceEntry(name, op.type, [ref for b in op.inputs.values() for kind, ref in b
                                                      if kind == "var" and ref not in self.constants], value)
                    if keep:
                        self.values[name] = value
                        self.trace.append(entry)
                    if on_value is not None:
                        on_value(entry)
            if not keep:
                for bound in op.inputs.values():
                    for kind, ref in bound:
                        if kind == "var" and self._last_use.get(ref) == index:
                            env.pop(ref, None)
        return {out: np.asarray(env[var]) for out, var in zip(self.output_names, self.block_outputs, strict=True)}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The first output, as float32, for a program with one input."""
        if len(self.input_types) != 1:
            raise MILError(f"the program has {len(self.input_types)} inputs; call run() with a dict")
        (name,) = self.input_types
        out = self.run({name: x})
        return np.asarray(out[self.output_names[0]], dtype=np.float32)

    def op_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.type] = counts.get(op.type, 0) + 1
        return counts


def _read_spec(path: Any) -> tuple[Any, Path | None]:
    if hasattr(path, "get_spec"):
        wd = getattr(path, "weights_dir", None)
        return path.get_spec(), Path(wd) if wd else None
    import coremltools as ct

    p = Path(path)
    if not p.exists():
        raise MILError(f"no Core ML model at {p}")
    model = ct.models.MLModel(str(p), skip_model_load=True)
    wd = getattr(model, "weights_dir", None)
    if not wd and p.is_dir():
        candidate = p / "Data" / "com.apple.CoreML" / "weights"
        wd = str(candidate) if candidate.is_dir() else None
    return model.get_spec(), Path(wd) if wd else None


def _to_type(value: Any, ttype: _TensorType, where: str) -> Any:
    """Round/convert a computed value to the type the program declares for it (and check the shape)."""
    if ttype.dtype is str:
        return value
    arr = np.asarray(value)
    if arr.dtype != ttype.dtype:
        if np.issubdtype(ttype.dtype, np.integer) and np.issubdtype(arr.dtype, np.floating):
            raise MILError(f"{where}: a float value where the program declares {np.dtype(ttype.dtype)}")
        with np.errstate(over="ignore"):  # fp16 overflow is inf, as on fp16 hardware
            arr = arr.astype(ttype.dtype)
    if ttype.shape is not None and tuple(arr.shape) != ttype.shape:
        raise MILError(f"{where}: computed shape {tuple(arr.shape)} differs from the declared {ttype.shape}")
    return arr


# --------------------------------------------------------------------------- operations

OpImpl = Callable[[MILProgram, MILOp, dict], Any]
_OPS: dict[str, OpImpl] = {}
_CHECKS: dict[str, Callable[[MILProgram, MILOp], None]] = {}
_CONSTEXPR: dict[str, Callable[[MILOp], np.ndarray]] = {}


def _op(name: str, check: Callable[[MILProgram, MILOp], None] | None = None):
    def register(fn: OpImpl) -> OpImpl:
        _OPS[name] = fn
        if check is not None:
            _CHECKS[name] = check
        return fn

    return register


def _check_conv(p: MILProgram, op: MILOp) -> None:
    pad_type = p.const_operand(op, "pad_type", "valid")
    if pad_type not in ("valid", "custom", "same", "same_lower"):
        raise UnsupportedMILOp(f"{op.type} ({op.name}): pad_type {pad_type!r} is not supported")
    rank = p.var_types[op.inputs["x"][0][1]].shape if op.inputs["x"][0][0] == "var" else None
    if rank is not None and len(rank) != 4:
        raise UnsupportedMILOp(f"{op.type} ({op.name}): only 2-D (rank-4) inputs are supported, got {rank}")
    if op.type == "conv_transpose" and pad_type in ("same", "same_lower"):
        raise UnsupportedMILOp(f"conv_transpose ({op.name}): pad_type {pad_type!r} is not supported "
                               "(its padding split is implementation-defined)")


def _conv_params(p: MILProgram, op: MILOp, x: np.ndarray, kernel: list[int]):
    strides = _ints(p.operand(op, "strides", [1, 1]))
    dilations = _ints(p.operand(op, "dilations", [1, 1]))
    groups = int(_scalar(p.operand(op, "groups", 1)))
    pad_type = p.operand(op, "pad_type", "valid")
    pad = p.operand(op, "pad", None)
    pads = _spatial_pads(pad_type, None if pad is None else _ints(pad), x.shape[2:], kernel, strides,
                         dilations, op.type)
    return strides, dilations, groups, pads


@_op("conv", _check_conv)
def _conv(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "x", env=env))
    w = _f32(p.operand(op, "weight", env=env))
    b = p.operand(op, "bias", None, env)
    strides, dilations, groups, pads = _conv_params(p, op, x, list(w.shape[2:]))
    return _conv2d(x, w, None if b is None else _f32(b), strides, pads, dilations, groups)


@_op("conv_transpose", _check_conv)
def _conv_transpose(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "x", env=env))
    w = _f32(p.operand(op, "weight", env=env))
    b = p.operand(op, "bias", None, env)
    strides, dilations, groups, pads = _conv_params(p, op, x, list(w.shape[2:]))
    out = _conv_transpose2d(x, w, None if b is None else _f32(b), strides, pads, dilations, groups)
    shape = p.operand(op, "output_shape", None, env)
    if shape is not None and tuple(_ints(shape)) != out.shape:
        raise UnsupportedMILOp(f"conv_transpose ({op.name}): output_shape {tuple(_ints(shape))} differs from "
                               f"the size the padding gives {out.shape} (output padding is not supported)")
    return out


@_op("linear")
def _linear(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "x", env=env))
    w = _f32(p.operand(op, "weight", env=env))
    out = np.matmul(x, w.T)
    b = p.operand(op, "bias", None, env)
    if b is not None:
        out += _f32(b)
    return out


def _check_prelu(p: MILProgram, op: MILOp) -> None:
    alpha = np.asarray(p.const_operand(op, "alpha"))
    if alpha.ndim != 1:
        raise UnsupportedMILOp(f"prelu ({op.name}): alpha must be a vector, got shape {alpha.shape}")


@_op("prelu", _check_prelu)
def _prelu(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "x", env=env))
    alpha = _f32(p.operand(op, "alpha", env=env))
    if x.ndim < 2 or alpha.shape[0] not in (1, x.shape[1]):
        raise MILError(f"prelu: alpha of length {alpha.shape[0]} for input {x.shape}")
    a = alpha.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x > 0, x, x * a)


@_op("leaky_relu")
def _leaky_relu(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    # coremltools writes a PReLU whose slopes are all equal as leaky_relu with one scalar alpha
    x = _f32(p.operand(op, "x", env=env))
    alpha = np.float32(_scalar(p.operand(op, "alpha", env=env)))
    return np.where(x >= 0, x, x * alpha)


@_op("relu")
def _relu(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    return np.maximum(_f32(p.operand(op, "x", env=env)), np.float32(0))


@_op("sigmoid")
def _sigmoid(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "x", env=env))
    # 1 / (1 + exp(-x)) without overflow warnings for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> OpImpl:
    def impl(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
        x = np.asarray(p.operand(op, "x", env=env))
        y = np.asarray(p.operand(op, "y", env=env))
        if np.issubdtype(x.dtype, np.floating) or np.issubdtype(y.dtype, np.floating):
            x, y = _f32(x), _f32(y)
        return fn(x, y)

    return impl


_OPS["add"] = _binary(np.add)
_OPS["mul"] = _binary(np.multiply)


def _check_concat(p: MILProgram, op: MILOp) -> None:
    if bool(_scalar(p.const_operand(op, "interleave", False))):
        raise UnsupportedMILOp(f"concat ({op.name}): interleave=True is not supported")


@_op("concat", _check_concat)
def _concat(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    values = [np.asarray(v) for v in p.operands(op, "values", env)]
    axis = int(_scalar(p.operand(op, "axis", env=env)))
    if any(np.issubdtype(v.dtype, np.floating) for v in values):
        values = [_f32(v) for v in values]
    return np.concatenate(values, axis=axis)


@_op("transpose")
def _transpose(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = np.asarray(p.operand(op, "x", env=env))
    return np.transpose(x, _ints(p.operand(op, "perm", env=env)))


@_op("reshape")
def _reshape(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = np.asarray(p.operand(op, "x", env=env))
    shape = _ints(p.operand(op, "shape", env=env))
    # iOS17 semantics: a 0 copies the input dimension aligned from the right (1 if out of range)
    resolved = []
    for i, s in enumerate(shape):
        if s == 0:
            j = x.ndim - (len(shape) - i)
            resolved.append(x.shape[j] if 0 <= j < x.ndim else 1)
        else:
            resolved.append(s)
    return x.reshape(resolved)


@_op("reduce_mean")
def _reduce_mean(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "x", env=env))
    axes = p.operand(op, "axes", None, env)
    keep = bool(_scalar(p.operand(op, "keep_dims", False, env)))
    axis = None if axes is None else tuple(_ints(axes))
    return np.mean(x, axis=axis, keepdims=keep, dtype=np.float32)


def _check_pool(p: MILProgram, op: MILOp) -> None:
    if bool(_scalar(p.const_operand(op, "ceil_mode", False))):
        raise UnsupportedMILOp(f"avg_pool ({op.name}): ceil_mode=True is not supported")
    pad_type = p.const_operand(op, "pad_type", "valid")
    if pad_type not in ("valid", "custom", "same", "same_lower"):
        raise UnsupportedMILOp(f"avg_pool ({op.name}): pad_type {pad_type!r} is not supported")
    if len(_ints(p.const_operand(op, "kernel_sizes"))) != 2:
        raise UnsupportedMILOp(f"avg_pool ({op.name}): only 2-D pooling is supported")


@_op("avg_pool", _check_pool)
def _avg_pool(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "x", env=env))
    kernel = _ints(p.operand(op, "kernel_sizes", env=env))
    strides = _ints(p.operand(op, "strides", [1, 1], env))
    pad = p.operand(op, "pad", None, env)
    pads = _spatial_pads(p.operand(op, "pad_type", "valid", env), None if pad is None else _ints(pad),
                         x.shape[2:], kernel, strides, [1, 1], op.type)
    exclude = bool(_scalar(p.operand(op, "exclude_padding_from_average", False, env)))
    (pt, pb), (pl, pr) = pads
    h, w = x.shape[2:]
    oh = (h + pt + pb - kernel[0]) // strides[0] + 1
    ow = (w + pl + pr - kernel[1]) // strides[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if pt or pb or pl or pr else x
    total = np.zeros((*x.shape[:2], oh, ow), dtype=np.float32)
    for _, _, view in _taps(xp, kernel[0], kernel[1], (oh, ow), strides, [1, 1]):
        total += view
    if exclude and (pt or pb or pl or pr):
        ones = np.pad(np.ones((h, w), dtype=np.float32), ((pt, pb), (pl, pr)))
        count = np.zeros((oh, ow), dtype=np.float32)
        for _, _, view in _taps(ones, kernel[0], kernel[1], (oh, ow), strides, [1, 1]):
            count += view
        return total / count
    return total / np.float32(kernel[0] * kernel[1])


@_op("upsample_bilinear")
def _upsample_bilinear(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "x", env=env))
    align = bool(_scalar(p.operand(op, "align_corners", True, env)))
    half = bool(_scalar(p.operand(op, "half_pixel_centers", not align, env)))
    declared = op.output_types[0].shape
    h, w = x.shape[-2:]
    if declared is not None:
        oh, ow = declared[-2:]
    else:
        sh = float(_scalar(p.operand(op, "scale_factor_height", 1, env)))
        sw = float(_scalar(p.operand(op, "scale_factor_width", 1, env)))
        oh, ow = math.floor(h * sh), math.floor(w * sw)
    mh = _interp_matrix(h, oh, align, half).astype(np.float32)
    mw = _interp_matrix(w, ow, align, half).astype(np.float32)
    return np.matmul(np.matmul(mh, x), mw.T)


@_op("batch_norm")
def _batch_norm(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "x", env=env))
    mean = _f32(p.operand(op, "mean", env=env))
    var = _f32(p.operand(op, "variance", env=env))
    gamma = p.operand(op, "gamma", None, env)
    beta = p.operand(op, "beta", None, env)
    eps = np.float32(_scalar(p.operand(op, "epsilon", 1e-5, env)))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if gamma is not None:
        y = y * _f32(gamma).reshape(shape)
    if beta is not None:
        y = y + _f32(beta).reshape(shape)
    return y


def _check_cast(p: MILProgram, op: MILOp) -> None:
    name = p.const_operand(op, "dtype")
    if name not in _DTYPE_NAMES:
        raise UnsupportedMILOp(f"cast ({op.name}): dtype {name!r} is not supported")


@_op("cast", _check_cast)
def _cast(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = np.asarray(p.operand(op, "x", env=env))
    target = _DTYPE_NAMES[p.operand(op, "dtype", env=env)]
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        info = np.iinfo(target)
        return np.clip(np.rint(_f32(x)), info.min, info.max).astype(target)
    return x.astype(target)


def _check_quantize(p: MILProgram, op: MILOp) -> None:
    name = p.const_operand(op, "output_dtype")
    if name not in ("int8", "uint8"):
        raise UnsupportedMILOp(f"quantize ({op.name}): output_dtype {name!r} is not supported")


@_op("quantize", _check_quantize)
def _quantize(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    x = _f32(p.operand(op, "input", env=env))
    axis = p.operand(op, "axis", None, env)
    axis = None if axis is None else int(_scalar(axis))
    scale = _broadcast_along(_f32(p.operand(op, "scale", env=env)), x.ndim, axis)
    zp = p.operand(op, "zero_point", None, env)
    target = _DTYPE_NAMES[p.operand(op, "output_dtype", env=env)]
    q = np.rint(x / scale)
    if zp is not None:
        q = q + _broadcast_along(_f32(zp), x.ndim, axis)
    info = np.iinfo(target)
    return np.clip(q, info.min, info.max).astype(target)


@_op("dequantize")
def _dequantize(p: MILProgram, op: MILOp, env: dict) -> np.ndarray:
    q = np.asarray(p.operand(op, "input", env=env))
    axis = p.operand(op, "axis", None, env)
    axis = None if axis is None else int(_scalar(axis))
    scale = _broadcast_along(_f32(p.operand(op, "scale", env=env)), q.ndim, axis)
    zp = p.operand(op, "zero_point", None, env)
    v = _f32(q)
    if zp is not None:
        v = v - _broadcast_along(_f32(zp), q.ndim, axis)
    return v * scale


def _constexpr_affine_dequantize(op: MILOp) -> np.ndarray:
    attrs = op.attributes
    missing = [k for k in ("quantized_data", "scale", "zero_point", "axis") if k not in attrs]
    if missing:
        raise UnsupportedMILOp(f"constexpr_affine_dequantize ({op.name}): missing {', '.join(missing)}")
    q = np.asarray(attrs["quantized_data"])
    axis = int(_scalar(attrs["axis"]))
    scale = _broadcast_along(_f32(attrs["scale"]), q.ndim, axis)
    zp = _broadcast_along(_f32(attrs["zero_point"]), q.ndim, axis)
    return (_f32(q) - zp) * scale


_CONSTEXPR["constexpr_affine_dequantize"] = _constexpr_affine_dequantize

SUPPORTED_OPS = tuple(sorted({"const", *_OPS, *_CONSTEXPR}))


# --------------------------------------------------------------------------- runtime registration


def status() -> tuple[bool, str]:
    if importlib.util.find_spec("coremltools") is None:
        return False, "coremltools is not installed (pip install coremltools==9.0); it reads the ML program"
    return True, ""


def load(path: Path, artifact: dict) -> Callable[[np.ndarray], np.ndarray]:
    program = MILProgram(Path(path))

    def run(x: np.ndarray) -> np.ndarray:
        return program(np.ascontiguousarray(x, dtype=np.float32))

    run.program = program  # type: ignore[attr-defined]
    return run


RUNTIMES = [RuntimeSpec("mil-reference-interpreter", "CPU", LABEL, ("coreml",), ("coreml",), load, status)]
