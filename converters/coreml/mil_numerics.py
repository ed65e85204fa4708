"""Numerics of the MIL reference interpreter: padding, convolution taps, interpolation matrices, broadcasting."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class UnsupportedMILOp(NotImplementedError):
    """The program uses an operation (or an option of one) this interpreter does not implement."""


class MILError(RuntimeError):
    """The program is malformed or a computed value contradicts the type the program declares."""




def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _ints(v: Any) -> list[int]:
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _scalar(v: Any) -> Any:
    arr = np.asarray(v)
    if arr.size != 1:
        raise MILError(f"expected a scalar, got shape {arr.shape}")
    return arr.reshape(()).item()


def _spatial_pads(pad_type: str, pad: list[int] | None, in_hw: tuple[int, ...], kernel: list[int],
                  strides: list[int], dilations: list[int], op: str) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dimension, for conv and pooling pad types."""
    n = len(in_hw)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        p = pad or [0] * (2 * n)
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        pads = []
        for i in range(n):
            eff = (kernel[i] - 1) * dilations[i] + 1
            out = -(-in_hw[i] // strides[i])
            total = max((out - 1) * strides[i] + eff - in_hw[i], 0)
            small, big = total // 2, total - total // 2
            pads.append((big, small) if pad_type == "same_lower" else (small, big))
        return pads
    raise UnsupportedMILOp(f"{op}: pad_type {pad_type!r} is not supported")


def _taps(xp: np.ndarray, kh: int, kw: int, out_hw: tuple[int, int], strides: list[int],
          dilations: list[int]) -> Iterator[tuple[int, int, np.ndarray]]:
    """Strided views of the padded input, one per kernel tap: (i, j, x[..., oh, ow])."""
    oh, ow = out_hw
    sh, sw = strides
    dh, dw = dilations
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            yield i, j, xp[..., r0:r0 + (oh - 1) * sh + 1:sh, c0:c0 + (ow - 1) * sw + 1:sw]


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides: list[int],
            pads: list[tuple[int, int]], dilations: list[int], groups: int) -> np.ndarray:
    """2-D convolution (cross-correlation), NCHW, weights (C_out, C_in/groups, KH, KW), in float32."""
    n, c, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    if c != cin_g * groups or cout % groups:
        raise MILError(f"conv: input channels {c} do not match weight {w.shape} with groups={groups}")
    (pt, pb), (pl, pr) = pads
    oh = (h + pt + pb - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + pl + pr - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if pt or pb or pl or pr else x
    cout_g = cout // groups
    if cin_g == 1 and cout_g == 1:  # depth-wise: one multiply-add per tap, vectorised over channels
        out = np.zeros((n, cout, oh, ow), dtype=np.float32)
        for i, j, view in _taps(xp, kh, kw, (oh, ow), strides, dilations):
            out += w[:, 0, i, j].reshape(1, cout, 1, 1) * view
    else:  # im2col per group and one batched matrix product
        if kh == kw == 1 and strides == [1, 1] and xp is x:
            cols = x.reshape(n, groups, cin_g, h * wd)
        else:
            cols = np.empty((n, groups, cin_g, kh * kw, oh * ow), dtype=np.float32)
            for i, j, view in _taps(xp, kh, kw, (oh, ow), strides, dilations):
                cols[:, :, :, i * kw + j, :] = view.reshape(n, groups, cin_g, oh * ow)
            cols = cols.reshape(n, groups, cin_g * kh * kw, oh * ow)
        wm = w.reshape(groups, cout_g, cin_g * kh * kw)
        out = np.matmul(wm, cols).reshape(n, cout, oh, ow)
    if b is not None:
        out += b.reshape(1, cout, 1, 1)
    return out


def _conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides: list[int],
                      pads: list[tuple[int, int]], dilations: list[int], groups: int) -> np.ndarray:
    """Transposed 2-D convolution, NCHW, weights (C_in, C_out/groups, KH, KW), in float32.

    Every input pixel scatters ``weight[:, :, i, j]``-weighted copies to output
    ``(ih * stride + i * dilation, iw * stride + j * dilation)``; the padding is
    then cropped from the full result.
    """
    n, c, h, wd = x.shape
    cin, cout_g, kh, kw = w.shape
    if c != cin or cin % groups:
        raise MILError(f"conv_transpose: input channels {c} do not match weight {w.shape} with groups={groups}")
    cin_g = cin // groups
    cout = cout_g * groups
    sh, sw = strides
    dh, dw = dilations
    fh = (h - 1) * sh + (kh - 1) * dh + 1
    fw = (wd - 1) * sw + (kw - 1) * dw + 1
    full = np.zeros((n, cout, fh, fw), dtype=np.float32)
    xg = x.reshape(n, groups, cin_g, h * wd)
    wg = w.reshape(groups, cin_g, cout_g, kh, kw)
    for i in range(kh):
        for j in range(kw):
            contrib = np.matmul(wg[:, :, :, i, j].transpose(0, 2, 1), xg).reshape(n, cout, h, wd)
            full[:, :, i * dh:i * dh + (h - 1) * sh + 1:sh, j * dw:j * dw + (wd - 1) * sw + 1:sw] += contrib
    (pt, pb), (pl, pr) = pads
    out = full[:, :, pt:fh - pb, pl:fw - pr]
    if b is not None:
        out = out + b.reshape(1, cout, 1, 1)
    return out


def _interp_matrix(n_in: int, n_out: int, align_corners: bool, half_pixel_centers: bool) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation weights, per MIL upsample_bilinear.

    align_corners:     src = i * (n_in - 1) / (n_out - 1)
    half_pixel_centers: src = (i + 0.5) * n_in / n_out - 0.5
    neither:           src = i * n_in / n_out
    src is clamped to [0, n_in - 1]; the scale is recomputed from the sizes.
    """
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    elif half_pixel_centers:
        src = (i + 0.5) * (n_in / n_out) - 0.5
    else:
        src = i * (n_in / n_out)
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def _broadcast_along(v: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """A scalar or a vector made broadcastable along ``axis`` of a rank-``rank`` tensor."""
    v = np.asarray(v)
    if v.ndim == 0:
        return v
    if v.ndim != 1 or axis is None:
        raise MILError(f"quantization parameter of shape {v.shape} needs a scalar or a vector with an axis")
    axis = axis % rank
    shape = [1] * rank
    shape[axis] = v.shape[0]
    return v.reshape(shape)


