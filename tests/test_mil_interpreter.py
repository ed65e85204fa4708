"""MIL reference interpreter: every operation against PyTorch, then whole converted models.

Single operations are written as MIL programs with coremltools' builder and
saved without graph passes, so each test exercises exactly one op with the
attributes under test. Whole networks go through the project's Core ML
converter and are compared with the PyTorch module they came from.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

ct = pytest.importorskip("coremltools")
from coremltools.converters.mil import Builder as mb  # noqa: E402

from converters.coreml import mil_interpreter as mi  # noqa: E402
from converters.coreml.mil_interpreter import MILProgram, UnsupportedMILOp  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def build(body, *shapes: tuple[int, ...]) -> MILProgram:
    """An iOS17 ML program of ``body`` on float32 inputs x0, x1..., saved with no graph passes."""
    specs = [mb.TensorSpec(shape=s) for s in shapes]

    if len(shapes) == 1:
        def main(x0):
            return body(x0)
    elif len(shapes) == 2:
        def main(x0, x1):
            return body(x0, x1)
    else:
        raise ValueError("one or two inputs")
    prog = mb.program(input_specs=specs, opset_version=ct.target.iOS17)(main)

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                       compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY,
                       skip_model_load=True)
    return MILProgram(model)


def run(program: MILProgram, *xs: np.ndarray, keep: bool = False) -> np.ndarray:
    feeds = dict(zip(program.input_types, xs, strict=True))
    (out,) = program.run(feeds, keep=keep).values()
    return out


def close(a: np.ndarray, b: torch.Tensor | np.ndarray, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, dtype=np.float32), b, rtol=rtol, atol=atol)


T = torch.from_numpy


# --------------------------------------------------------------------------- convolution


CONV_CASES = [
    # (c_in, c_out, k, stride, pad_type, pad, groups, dilation, bias)
    (3, 8, 3, 1, "custom", [1, 1, 1, 1], 1, 1, True),
    (4, 6, 3, 2, "custom", [1, 0, 2, 1], 2, 1, False),  # asymmetric padding, groups
    (6, 6, 3, 1, "custom", [2, 2, 2, 2], 6, 2, False),  # depth-wise, dilated
    (6, 12, 3, 2, "custom", [1, 1, 1, 1], 6, 1, True),  # depth multiplier 2
    (8, 4, 1, 1, "valid", None, 1, 1, True),  # point-wise
    (8, 8, 1, 1, "valid", None, 4, 1, False),  # grouped point-wise
    (3, 5, (3, 2), (2, 1), "same", None, 1, (1, 2), True),
    (3, 5, 4, 2, "same_lower", None, 1, 1, False),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
def test_conv(case) -> None:
    cin, cout, k, s, pad_type, pad, groups, d, bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (s, s) if isinstance(s, int) else s
    dh, dw = (d, d) if isinstance(d, int) else d
    w = rand(cout, cin // groups, kh, kw)
    b = rand(cout) if bias else None
    x = rand(2, cin, 9, 11)

    def body(v):
        kw_ = {"pad": pad} if pad is not None else {}
        if b is not None:
            kw_["bias"] = b
        return mb.conv(x=v, weight=w, strides=[sh, sw], pad_type=pad_type, groups=groups, dilations=[dh, dw], **kw_)

    out = run(build(body, x.shape), x)
    if pad_type == "custom":
        xp = F.pad(T(x), (pad[2], pad[3], pad[0], pad[1]))
    elif pad_type == "valid":
        xp = T(x)
    else:  # same / same_lower: total padding so that out = ceil(in / stride)
        pads = []
        for size, kk, ss, dd in ((9, kh, sh, dh), (11, kw, sw, dw)):
            eff = (kk - 1) * dd + 1
            total = max((-(-size // ss) - 1) * ss + eff - size, 0)
            lo, hi = total // 2, total - total // 2
            pads.append((hi, lo) if pad_type == "same_lower" else (lo, hi))
        xp = F.pad(T(x), (*pads[1], *pads[0]))
    ref = F.conv2d(xp, T(w), None if b is None else T(b), stride=(sh, sw), dilation=(dh, dw), groups=groups)
    close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [
    # (c_in, c_out, k, stride, pad, groups, dilation, bias)
    (6, 4, 2, 2, 0, 1, 1, False),  # ESPNet's k=2, s=2 up-sampling
    (4, 6, 3, 2, 1, 2, 1, True),
    (3, 3, 3, 1, 2, 1, 2, True),
], ids=["k2s2", "k3s2p1g2", "dilated"])
def test_conv_transpose(case) -> None:
    cin, cout, k, s, p, groups, d, bias = case
    w = rand(cin, cout // groups, k, k)
    b = rand(cout) if bias else None
    x = rand(1, cin, 5, 7)
    ref = F.conv_transpose2d(T(x), T(w), None if b is None else T(b), stride=s, padding=p, groups=groups,
                             dilation=d)

    def body(v):
        extra = {"bias": b} if b is not None else {}
        return mb.conv_transpose(x=v, weight=w, strides=[s, s], pad_type="custom", pad=[p] * 4, groups=groups,
                                 dilations=[d, d], output_shape=list(ref.shape), **extra)

    close(run(build(body, x.shape), x), ref, rtol=1e-4, atol=1e-4)


def test_conv_transpose_output_padding_is_refused() -> None:
    x = rand(1, 2, 3, 3)
    w = rand(2, 2, 2, 2)
    with pytest.raises(UnsupportedMILOp, match="output_shape"):
        prog = build(lambda v: mb.conv_transpose(x=v, weight=w, strides=[2, 2], pad_type="valid",
                                                 output_shape=[1, 2, 7, 7]), x.shape)
        run(prog, x)


# --------------------------------------------------------------------------- element-wise and activations


def test_prelu() -> None:
    x = rand(1, 5, 4, 6)
    alpha = np.abs(rand(5)) * 0.3
    close(run(build(lambda v: mb.prelu(x=v, alpha=alpha), x.shape), x), F.prelu(T(x), T(alpha)))


def test_leaky_relu() -> None:
    # what coremltools writes for a PReLU whose slopes are all equal (e.g. freshly initialised)
    x = rand(1, 5, 4, 6)
    close(run(build(lambda v: mb.leaky_relu(x=v, alpha=0.25), x.shape), x), F.leaky_relu(T(x), 0.25))


def test_relu_and_sigmoid() -> None:
    x = rand(1, 3, 4, 4, scale=20.0)  # large values: sigmoid must not overflow
    close(run(build(lambda v: mb.relu(x=v), x.shape), x), F.relu(T(x)))
    close(run(build(lambda v: mb.sigmoid(x=v), x.shape), x), torch.sigmoid(T(x)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", ["add", "mul"])
def test_binary_with_broadcasting(op) -> None:
    a, b = rand(1, 4, 5, 6), rand(1, 4, 1, 1)
    fn = getattr(mb, op)
    ref = T(a) + T(b) if op == "add" else T(a) * T(b)
    close(run(build(lambda u, v: fn(x=u, y=v), a.shape, b.shape), a, b), ref)
    const = rand(4, 1, 1)
    ref_c = T(a) + T(const) if op == "add" else T(a) * T(const)
    close(run(build(lambda u: fn(x=u, y=const), a.shape), a), ref_c)


# --------------------------------------------------------------------------- data movement


def test_concat_transpose_reshape() -> None:
    a, b = rand(1, 2, 3, 4), rand(1, 5, 3, 4)
    close(run(build(lambda u, v: mb.concat(values=[u, v, u], axis=1), a.shape, b.shape), a, b),
          torch.cat([T(a), T(b), T(a)], 1))
    close(run(build(lambda u: mb.transpose(x=u, perm=[0, 3, 1, 2]), a.shape), a), T(a).permute(0, 3, 1, 2))
    flat = rand(1, 24)
    close(run(build(lambda u: mb.reshape(x=u, shape=[1, 2, 3, 4, 1]), flat.shape), flat),
          T(flat).reshape(1, 2, 3, 4, 1))
    x = rand(1, 6, 3, 4)  # channel shuffle as the deployable graph writes it
    shuffled = run(build(lambda u: mb.reshape(x=mb.transpose(x=mb.reshape(x=u, shape=[1, 2, 3, 3, 4]),
                                                             perm=[0, 2, 1, 3, 4]), shape=[1, 6, 3, 4]),
                         x.shape), x)
    close(shuffled, T(x).reshape(1, 2, 3, 3, 4).transpose(1, 2).reshape(1, 6, 3, 4))
    # iOS17 reshape: 0 copies the input dimension aligned from the right, -1 is inferred
    two = rand(2, 50)
    close(run(build(lambda u: mb.reshape(x=u, shape=[1, 0, -1, 0]), two.shape), two), T(two).reshape(1, 1, 2, 50))


def test_concat_interleave_is_refused() -> None:
    with pytest.raises(UnsupportedMILOp, match="interleave"):
        build(lambda u: mb.concat(values=[u, u], axis=1, interleave=True), (1, 2, 3, 3))


# --------------------------------------------------------------------------- resizing, pooling, reductions


@pytest.mark.parametrize("size,scale", [((4, 5), (2.0, 2.0)), ((3, 4), (2.5, 3.0)), ((8, 8), (8.0, 8.0))])
def test_upsample_bilinear_align_corners(size, scale) -> None:
    x = rand(1, 3, *size)
    out_hw = (int(size[0] * scale[0]), int(size[1] * scale[1]))
    prog = build(lambda v: mb.upsample_bilinear(x=v, scale_factor_height=scale[0], scale_factor_width=scale[1],
                                                align_corners=True), x.shape)
    close(run(prog, x), F.interpolate(T(x), size=out_hw, mode="bilinear", align_corners=True))


def test_upsample_bilinear_half_pixel() -> None:
    x = rand(1, 2, 4, 6)
    prog = build(lambda v: mb.upsample_bilinear(x=v, scale_factor_height=2.0, scale_factor_width=3.0,
                                                align_corners=False, half_pixel_centers=True), x.shape)
    close(run(prog, x), F.interpolate(T(x), size=(8, 18), mode="bilinear", align_corners=False))


def test_linear() -> None:
    x = rand(1, 3, 5, 7)
    w, b = rand(4, 7), rand(4)
    close(run(build(lambda v: mb.linear(x=v, weight=w, bias=b), x.shape), x), F.linear(T(x), T(w), T(b)),
          rtol=1e-5, atol=1e-5)
    close(run(build(lambda v: mb.linear(x=v, weight=w), x.shape), x), F.linear(T(x), T(w)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,pad,exclude", [
    ((2, 2), (2, 2), [0, 0, 0, 0], True),  # adaptive pooling with divisible sizes
    ((4, 2), (4, 2), [0, 0, 0, 0], False),
    ((3, 3), (2, 2), [1, 1, 1, 1], True),  # padding excluded from the average
    ((3, 3), (2, 2), [1, 1, 1, 1], False),  # padding counted
])
def test_avg_pool(kernel, stride, pad, exclude) -> None:
    x = rand(1, 3, 8, 8)
    prog = build(lambda v: mb.avg_pool(x=v, kernel_sizes=list(kernel), strides=list(stride), pad_type="custom",
                                       pad=pad, exclude_padding_from_average=exclude), x.shape)
    ref = F.avg_pool2d(T(x), kernel, stride, padding=(pad[0], pad[2]), count_include_pad=not exclude)
    close(run(prog, x), ref)


def test_avg_pool_ceil_mode_is_refused() -> None:
    with pytest.raises(UnsupportedMILOp, match="ceil_mode"):
        build(lambda v: mb.avg_pool(x=v, kernel_sizes=[3, 3], strides=[2, 2], pad_type="valid", ceil_mode=True),
              (1, 2, 7, 7))


def test_reduce_mean() -> None:
    x = rand(1, 4, 5, 6)
    close(run(build(lambda v: mb.reduce_mean(x=v, axes=[2, 3], keep_dims=True), x.shape), x),
          T(x).mean(dim=(2, 3), keepdim=True))
    close(run(build(lambda v: mb.reduce_mean(x=v, axes=[1], keep_dims=False), x.shape), x), T(x).mean(dim=1))


def test_batch_norm() -> None:
    x = rand(1, 4, 3, 5)
    mean, var, gamma, beta = rand(4), np.abs(rand(4)) + 0.5, rand(4), rand(4)
    prog = build(lambda v: mb.batch_norm(x=v, mean=mean, variance=var, gamma=gamma, beta=beta, epsilon=1e-3),
                 x.shape)
    close(run(prog, x), F.batch_norm(T(x), T(mean), T(var), T(gamma), T(beta), eps=1e-3))


# --------------------------------------------------------------------------- fp16


def fp16_ulp(v: np.ndarray) -> np.ndarray:
    return np.spacing(np.abs(v).astype(np.float16)).astype(np.float32)


def test_cast_and_fp16_compute_is_rounded_after_each_op() -> None:
    x = rand(1, 4, 6, 6)
    w16 = rand(6, 4, 3, 3).astype(np.float16)
    b16 = rand(6).astype(np.float16)
    alpha = np.abs(rand(6)) * 0.3  # fp32 alpha on fp16 data, as coremltools writes it

    def body(v):
        h = mb.cast(x=v, dtype="fp16", name="x16")
        c = mb.conv(x=h, weight=w16, bias=b16, pad_type="custom", pad=[1, 1, 1, 1], name="conv16")
        p = mb.prelu(x=c, alpha=alpha, name="prelu16")
        return mb.cast(x=p, dtype="fp32")

    prog = build(body, x.shape)
    assert prog.compute_precision == "fp16"
    out = run(prog, x, keep=True)
    assert prog.values["x16"].dtype == np.float16 and prog.values["conv16"].dtype == np.float16
    # reference: fp16-rounded input and weights, exact arithmetic, one rounding to fp16 per op
    x16 = x.astype(np.float16).astype(np.float64)
    conv = F.conv2d(torch.from_numpy(x16), torch.from_numpy(w16.astype(np.float64)),
                    torch.from_numpy(b16.astype(np.float64)), padding=1).numpy().astype(np.float16)
    np.testing.assert_array_less(np.abs(prog.values["conv16"].astype(np.float32) - conv.astype(np.float32)),
                                 fp16_ulp(conv) + 1e-7)  # within one fp16 ulp (fp32 accumulation order)
    prelu = F.prelu(torch.from_numpy(prog.values["conv16"].astype(np.float32)), T(alpha)).numpy()
    np.testing.assert_array_equal(out, prelu.astype(np.float16).astype(np.float32))
    assert out.dtype == np.float32


def test_fp16_overflow_becomes_inf() -> None:
    x = np.full((1, 1, 2, 2), 300.0, dtype=np.float32)
    prog = build(lambda v: mb.cast(x=mb.mul(x=mb.cast(x=v, dtype="fp16"), y=np.float16(300.0)), dtype="fp32"),
                 x.shape)
    assert np.isinf(run(prog, x)).all()


# --------------------------------------------------------------------------- int8


def test_quantize_dequantize_per_tensor() -> None:
    x = rand(1, 3, 4, 5, scale=2.0)
    scale, zp = np.float32(0.03), np.int8(5)

    def body(v):
        q = mb.quantize(input=v, scale=scale, zero_point=zp, output_dtype="int8", name="q")
        r = mb.reshape(x=q, shape=[1, 3, 20], name="q_reshaped")  # reshape on int8, as the converter emits
        return mb.dequantize(input=r, scale=scale, zero_point=zp)

    prog = build(body, x.shape)
    out = run(prog, x, keep=True)
    q_ref = torch.quantize_per_tensor(T(x), float(scale), int(zp), torch.qint8)
    assert prog.values["q"].dtype == np.int8 and prog.values["q_reshaped"].dtype == np.int8
    np.testing.assert_array_equal(prog.values["q"], q_ref.int_repr().numpy())
    close(out, q_ref.dequantize().reshape(1, 3, 20), rtol=0, atol=1e-6)


def test_quantize_uint8_without_zero_point_saturates() -> None:
    x = np.linspace(-0.5, 1.5, 40, dtype=np.float32).reshape(1, 1, 5, 8)
    scale = np.float32(1 / 255)
    prog = build(lambda v: mb.dequantize(input=mb.quantize(input=v, scale=scale, output_dtype="uint8", name="q"),
                                         scale=scale), x.shape)
    out = run(prog, x, keep=True)
    q_ref = torch.quantize_per_tensor(T(x), float(scale), 0, torch.quint8)
    np.testing.assert_array_equal(prog.values["q"], q_ref.int_repr().numpy())
    close(out, q_ref.dequantize(), rtol=0, atol=1e-6)


def test_quantize_per_channel() -> None:
    x = rand(1, 4, 3, 3)
    scale = (np.abs(rand(4)) * 0.05 + 0.01).astype(np.float32)
    zp = np.array([0, 3, -2, 1], dtype=np.int8)
    prog = build(lambda v: mb.dequantize(input=mb.quantize(input=v, scale=scale, zero_point=zp, axis=1,
                                                           output_dtype="int8"), scale=scale, zero_point=zp, axis=1),
                 x.shape)
    ref = torch.quantize_per_channel(T(x), T(scale).double(), torch.from_numpy(zp.astype(np.int64)), 1, torch.qint8)
    close(run(prog, x), ref.dequantize(), rtol=0, atol=1e-6)


def test_constexpr_affine_dequantize_weights() -> None:
    q = RNG.integers(-127, 128, size=(6, 4, 3, 3)).astype(np.int8)
    scale = (np.abs(rand(6)) * 0.02 + 0.001).astype(np.float32)
    zp = np.zeros(6, dtype=np.int8)
    x = rand(1, 4, 5, 5)

    def body(v):
        w = mb.constexpr_affine_dequantize(quantized_data=q, zero_point=zp, scale=scale, axis=0)
        return mb.conv(x=v, weight=w, pad_type="valid")

    prog = build(body, x.shape)
    w_ref = torch.quantize_per_channel(T(q.astype(np.float32) * scale[:, None, None, None]), T(scale).double(),
                                       torch.zeros(6, dtype=torch.int64), 0, torch.qint8).dequantize()
    close(run(prog, x), F.conv2d(T(x), w_ref), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- program handling


def test_unknown_op_fails_with_its_name() -> None:
    with pytest.raises(UnsupportedMILOp, match="'tanh'"):
        build(lambda v: mb.tanh(x=v), (1, 2, 3, 3))


def test_intermediates_by_var_name_and_trace_order() -> None:
    x = rand(1, 2, 4, 4)

    def body(v):
        a = mb.relu(x=v, name="first")
        b = mb.add(x=a, y=np.float32(1.0), name="second")
        return mb.mul(x=b, y=np.float32(2.0), name="third")

    prog = build(body, x.shape)
    out = run(prog, x, keep=True)
    assert [e.name for e in prog.trace] == ["first", "second", "third"]
    assert prog.trace[1].inputs == ["first"]
    close(prog.values["second"], np.maximum(x, 0) + 1)
    close(out, (np.maximum(x, 0) + 1) * 2)
    run(prog, x)  # without keep nothing is retained
    assert prog.values == {} and prog.trace == []


def test_runtime_is_registered() -> None:
    import converters

    (spec,) = [s for s in converters.runtimes() if s.name == "mil-reference-interpreter"]
    assert spec.label == "MIL reference interpreter, not the Core ML runtime"
    assert spec.applies({"target": "coreml", "delegate": "coreml"})
    assert not spec.applies({"target": "executorch", "delegate": "coreml"})
    assert spec.status() == (True, "")
    assert spec.judged_as("fp16") == "fp16"
    assert set(mi.SUPPORTED_OPS) >= {"conv", "conv_transpose", "prelu", "add", "concat", "transpose",
                                     "upsample_bilinear", "linear", "avg_pool", "reshape", "mul", "reduce_mean",
                                     "sigmoid", "cast", "quantize", "dequantize", "constexpr_affine_dequantize"}


# --------------------------------------------------------------------------- whole networks


class SmallNet(nn.Module):
    """The deployable graphs' operators in a small network: (1,3,32,32) -> (1,5,32,32) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Conv2d(3, 3, 1)
        self.conv_in = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn_in = nn.BatchNorm2d(16)
        self.act_in = nn.PReLU(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.dilated_dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16, bias=False)
        self.act_cat = nn.PReLU(32)
        self.gate = nn.Conv2d(32, 32, 1)
        self.register_buffer("mix_w", torch.randn(8, 8) / 3)
        self.classifier = nn.Conv2d(32, 5, 1)
        self.up = nn.ConvTranspose2d(5, 5, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_in(self.bn_in(self.conv_in(self.norm(x))))  # (1,16,16,16)
        y = self.act_cat(torch.cat([self.grouped(x), self.dilated_dw(x)], dim=1))
        y = F.avg_pool2d(y, 2, 2)  # (1,32,8,8)
        y = y * torch.sigmoid(self.gate(y.mean(dim=(2, 3), keepdim=True)))
        y = y.reshape(1, 2, 16, 8, 8).transpose(1, 2).reshape(1, 32, 8, 8)
        y = F.linear(y, self.mix_w) + F.linear(y.transpose(2, 3), self.mix_w).transpose(2, 3)
        y = self.up(self.classifier(y))  # (1,5,16,16)
        return F.interpolate(y, size=(32, 32), mode="bilinear", align_corners=True)


def small_net() -> SmallNet:
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def convert(module: nn.Module, example: torch.Tensor, precision: str, out: Path, **kw):
    from converters import coreml
    from converters.base import ConversionRequest

    return coreml.convert(ConversionRequest(module=module, example_input=example, precision=precision,
                                            out_path=out, **kw))


@pytest.fixture(scope="module")
def small_packages(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("mil_small")
    net = small_net()
    g = torch.Generator().manual_seed(3)
    calib = [torch.rand(1, 3, 32, 32, generator=g) for _ in range(8)]
    return {"net": net, "calib": calib,
            **{p: convert(net, calib[0], p, tmp / f"small_{p}.mlpackage",
                          calibration=calib if p == "int8" else None).path for p in ("fp32", "fp16", "int8")}}


def test_small_network_fp32_matches_pytorch(small_packages) -> None:
    prog = MILProgram(small_packages["fp32"])
    assert {"conv", "conv_transpose", "prelu", "linear", "upsample_bilinear", "avg_pool"} <= set(prog.op_types())
    for seed in range(3):
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = small_packages["net"](x).numpy()
        out = prog(x.numpy())
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_small_network_fp16_close_to_pytorch(small_packages) -> None:
    prog = MILProgram(small_packages["fp16"])
    assert prog.compute_precision == "fp16"
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = small_packages["net"](x).numpy()
    out = prog(x.numpy())
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_small_network_int8_matches_the_quantized_graph(small_packages) -> None:
    from converters import coreml

    prog = MILProgram(small_packages["int8"])
    assert {"quantize", "dequantize"} <= set(prog.op_types())
    calib = small_packages["calib"]
    quantized, _ = coreml.quantize_pt2e(small_packages["net"], calib[0], calibration=calib,
                                        quantizer=coreml.coreml_quantizer())
    agree = []
    for x in calib:
        with torch.no_grad():
            ref = quantized(x).numpy()
        out = prog(x.numpy())
        agree.append((out.argmax(1) == ref.argmax(1)).mean())
        # fp16 between the int8 ops and rounding ties move a few values by one quantization step
        assert np.abs(out - ref).max() <= 0.1 * np.abs(ref).max()
    assert np.mean(agree) >= 0.98


# --------------------------------------------------------------------------- the zoo's models


def _zoo_deployable(weights_dir: Path, model_id: str, h: int, w: int):
    import espnet_mobile as em
    from espnet_mobile.deploy import make_deployable
    from espnet_mobile.zoo import get_entry
    from espnet_mobile.zoo.weights import load_into, load_state_dict
    from tests.conftest import checkpoint_path

    entry = get_entry(model_id)
    model = em.build_model(entry)
    load_into(model, load_state_dict(checkpoint_path(weights_dir, model_id)), source=model_id)
    return make_deployable(model.eval(), entry, height=h, width=w)


@pytest.mark.slow
@pytest.mark.parametrize("model_id,h,w", [("espnetv2_s_0.5_pascal_256x256", 64, 64), ("espnet_p_2_q_3", 64, 128)])
def test_zoo_model_fp32_and_fp16(weights_dir, tmp_path, model_id, h, w) -> None:
    deployable = _zoo_deployable(weights_dir, model_id, h, w)
    g = torch.Generator().manual_seed(0)
    inputs = [torch.rand(1, 3, h, w, generator=g) for _ in range(2)]
    with torch.no_grad():
        refs = [deployable(x).numpy() for x in inputs]
    for precision in ("fp32", "fp16"):
        prog = MILProgram(convert(deployable, inputs[0], precision, tmp_path / f"m_{precision}.mlpackage").path)
        start = time.perf_counter()
        outs = [prog(x.numpy()) for x in inputs]
        assert time.perf_counter() - start < 30
        rel = max(np.abs(o - r).max() / np.abs(r).max() for o, r in zip(outs, refs, strict=True))
        agree = np.mean([(o.argmax(1) == r.argmax(1)).mean() for o, r in zip(outs, refs, strict=True)])
        if precision == "fp32":
            assert rel <= 1e-4
        else:
            assert agree >= 0.995
