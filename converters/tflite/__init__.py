"""TFLite / LiteRT backend: one ``.tflite`` flatbuffer per (model, precision).

Conversion goes through litert-torch (``torch.export`` -> StableHLO -> TFLite);
execution here goes through the ``ai_edge_litert`` Interpreter, whose default
CPU path is the XNNPACK delegate.

Precisions
    fp32  plain conversion, then each PReLU as one PRELU op instead of the four
          litert-torch writes (:func:`_native_prelu`, bit-exact). The LiteRT GPU
          accelerator does not take PRELU, so these files are CPU (and NPU
          dispatch) artifacts; the GPU artifact (``delegate="gpu"``) keeps the
          four ops.
    fp16  float16 weights, float32 compute (a DEQUANTIZE per weight, folded by
          XNNPACK and the GPU delegate); litert-torch's ``full_fp16_recipe``;
          PReLUs as for fp32.
    int8  full-integer static quantization through PT2E with LiteRT's own
          quantizer (:class:`litert_torch.quantize.pt2e_quantizer.PT2EQuantizer`),
          extended by :func:`get_quantizer` for the ops of the deployable
          segmentation graphs. Either calibrated here on ``req.calibration`` or
          taken from ``req.qat_module`` (prepared with ``prepare_qat_pt2e`` and
          :func:`get_quantizer(qat=True) <get_quantizer>`, then fine-tuned).
          After calibration, convolutions with a weight gain above
          ``int8_max_weight_gain`` (default :data:`DEFAULT_MAX_WEIGHT_GAIN`)
          and the PReLUs on both sides of them stay float
          (:func:`_mark_float_islands`); ESPNetv2 has three such convs.
          Before annotation, exact graph rewrites give every op an int8
          XNNPACK kernel and drop work (:meth:`transform_for_annotation`),
          among them BatchNorm affines folded into the conv ahead of a
          resize or pool (:func:`_fold_affine_into_conv`).

App contract: every artifact has float32 input and float32 output, whatever the
precision. For int8 the converter ends with int8 tensors at the model boundary;
this module then inserts a QUANTIZE after the input and a DEQUANTIZE before the
output (:func:`_float_io`), so an app feeds the same float tensor to every
artifact and never handles scales or zero points. :func:`run_tflite` still
accepts artifacts with integer I/O (from other tools) and (de)quantizes for them.

Each artifact carries one named signature (default ``segment``) with one input
(``image``: NCHW float, or NHWC with ``options["nhwc"]=True``) and one output
(``logits``: NCHW float32).

The same-scale failure, and why the quantizer is extended (see :func:`get_quantizer`).
With the authors' ESPNetv2 graph and LiteRT's stock PT2E quantizer, int8 conversion
stops with ``'tfl.transpose' op quantization parameters violate the same scale
constraint: !quant.uniform<i8:f32, 0.00379:-128> vs. !quant.uniform<i8:f32,
0.00392:-128>``. Those are the scales of the input image (range [0, 1]) and of its
3x3/stride-2 average pool (max 0.97), i.e. the input-reinforcement pyramid
``F.avg_pool2d(image)`` feeding a conv. The stock quantizer annotates conv, linear,
add, mul, cat, max/adaptive pooling and sigmoid, and shares observers only through
``view``/``permute``/``squeeze``/``slice``/``mean``; it leaves ``avg_pool2d``,
``pad``, ``upsample_bilinear2d``, ``aten.reshape`` and ``aten.transpose.int``
unannotated. So the pool's input is quantized with the image's observer and its
output with the next conv's own input observer, and the two differ.
litert-torch's layout pass wraps the NCHW pool in NCHW<->NHWC TRANSPOSE ops, and in
STATIC QDQ mode the converter pushes quantization through the float chain
``dequantize(s1) -> TRANSPOSE -> AVERAGE_POOL_2D -> TRANSPOSE -> quantize(s2)``. TFLite
requires equal input and output scales for TRANSPOSE, RESHAPE, PAD, AVERAGE_POOL_2D and
RESIZE_BILINEAR (their SameOperandsAndResultsScale trait), so the first TRANSPOSE in
the chain fails. A channel shuffle (reshape ->
transpose -> reshape) fails the same way as soon as both its producer and its consumer
are quantized with different observers. :func:`get_quantizer` gives every
single-input data-movement op one observer for its input and output, so ``s1 == s2``
by construction. The deployable graph already avoids this particular chain: it
computes the pyramid's pooling as a depthwise conv with weights 1/9, which the stock
quantizer does annotate.

Modules: ``toolchain`` (pins, versions), ``passes`` (FX rewrites before int8), ``quantizer``
(the extended PT2E quantizer), ``conversion`` (module -> file), ``flatbuffer`` (surgery on the
written file), ``gpu_rewrites`` (exact rewrites for the GPU accelerator), ``runtime``,
``gpu_runtime``, ``npu_runtime`` (executing artifacts here), ``debugger`` (first layer off).
"""

from __future__ import annotations

from converters.base import Backend, RuntimeSpec
from converters.tflite.conversion import convert
from converters.tflite.flatbuffer import inspect_tflite, share_quantization_vectors
from converters.tflite.quantizer import get_quantizer
from converters.tflite.runtime import run_tflite
from converters.tflite.toolchain import WRITER_VERSION
from converters.tflite.toolchain import tool_versions as _tool_versions


def _versions(_delegate: str, _precision: str) -> dict[str, str]:
    return _tool_versions()


def _rewrite(module, delegate: str):
    if delegate == "gpu":
        from converters.tflite.gpu_rewrites import gpu_friendly

        return gpu_friendly(module)
    return module


def _runtimes() -> list[RuntimeSpec]:
    from converters.tflite import gpu_runtime, npu_runtime, runtime

    return [*runtime.RUNTIMES, *gpu_runtime.RUNTIMES, *npu_runtime.RUNTIMES]


BACKEND = Backend(
    name="tflite", extension="tflite",
    delegates={"cpu": ("fp32", "fp16", "int8"), "gpu": ("fp32",)},
    supported={"cpu": ("fp32", "fp16", "int8"), "gpu": ("fp32", "fp16", "int8")},
    convert=convert, tool_versions=_versions, writer_version=WRITER_VERSION,
    quantizer=lambda qat: get_quantizer(qat=qat), qat_name="tflite", rewrite=_rewrite,
    runtimes=_runtimes, debugger="converters.tflite.debugger", float_layers_option="int8_fp32_layers",
)

__all__ = ["BACKEND", "convert", "get_quantizer", "inspect_tflite", "run_tflite", "share_quantization_vectors"]
