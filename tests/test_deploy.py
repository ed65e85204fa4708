"""Deployable graph: each rewrite is exact, and every zoo model exports and matches its reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import espnet_mobile as em
from espnet_mobile.deploy import (
    AvgPool3x3s2,
    FixedAdaptiveAvgPool2d,
    InputNormalization,
    adaptive_pool_matrix,
    batchnorm_as_conv,
    export,
    exported_op_counts,
    format_op_counts,
    make_deployable,
    normalize_reference,
    reference_forward,
)
from espnet_mobile.zoo import ESPNET_NORM, IMAGENET_NORM
from tests.conftest import checkpoint_path

# The default run checks one model per architecture; CI (and --slow) checks every zoo id.
QUICK = {"espnetv2_s_2.0_pascal_256x256", "espnet_p_2_q_8_camvid"}


@pytest.mark.parametrize(("n_in", "n_out"), [(16, 5), (16, 8), (24, 16), (7, 4), (5, 5), (3, 5), (30, 3)])
def test_adaptive_pool_matrix_equals_adaptive_avg_pool(n_in: int, n_out: int) -> None:
    x = torch.randn(2, 3, n_in)
    expected = F.adaptive_avg_pool1d(x, n_out)
    assert torch.allclose(x @ adaptive_pool_matrix(n_in, n_out).T, expected, atol=1e-6)


@pytest.mark.parametrize(("in_hw", "out_hw"), [((16, 16), (5, 5)), ((24, 24), (16, 16)),
                                               ((16, 32), (8, 16)), ((17, 32), (9, 16)), ((8, 8), (8, 8))])
def test_fixed_adaptive_pool_equals_reference(in_hw, out_hw) -> None:
    x = torch.randn(1, 4, *in_hw)
    assert torch.allclose(FixedAdaptiveAvgPool2d(in_hw, out_hw)(x), F.adaptive_avg_pool2d(x, out_hw), atol=1e-6)


def test_divisible_adaptive_pool_is_plain_pooling() -> None:
    assert FixedAdaptiveAvgPool2d((32, 32), (16, 16)).pool_kernel == (2, 2)
    non_divisible = FixedAdaptiveAvgPool2d((16, 16), (5, 5))
    assert non_divisible.pool_kernel is None and non_divisible.rows is not None


@pytest.mark.parametrize("hw", [(16, 16), (15, 9), (1, 1)])
def test_avg_pool_as_conv_counts_padding_like_pytorch(hw) -> None:
    x = torch.randn(1, 3, *hw) + 5.0  # an offset makes wrong border divisors visible
    expected = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=True)
    assert torch.allclose(AvgPool3x3s2(3)(x), expected, atol=1e-5)


def test_batchnorm_as_conv_is_exact() -> None:
    bn = torch.nn.BatchNorm2d(6, eps=1e-3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(1, 6, 5, 5)
    assert torch.allclose(batchnorm_as_conv(bn)(x), bn(x), atol=1e-6)


@pytest.mark.parametrize("norm", [IMAGENET_NORM, ESPNET_NORM], ids=["imagenet-rgb", "espnet-bgr"])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_input_normalization_matches_authors(norm, dtype: str) -> None:
    pixels = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    expected = normalize_reference(pixels.float() / 255.0, norm)
    layer = InputNormalization(norm, dtype)
    got = layer(pixels if dtype == "uint8" else pixels.float() / 255.0)
    assert torch.allclose(got, expected, atol=1e-5 * expected.abs().max())


def test_mask_head_and_uint8_input() -> None:
    model = em.create_model("espnetv2_s_0.5_pascal_256x256")
    entry = em.get_entry("espnetv2_s_0.5_pascal_256x256")
    logits_net = make_deployable(model, entry, height=64, width=64)
    mask_net = make_deployable(model, entry, height=64, width=64, input_dtype="uint8", head="mask")
    pixels = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        mask = mask_net(pixels)
        logits = logits_net(pixels.float() / 255.0)
    assert mask.dtype == torch.int32 and mask.shape == (1, 64, 64)
    assert (mask == logits.argmax(1)).float().mean() > 0.999


def test_reference_model_is_not_modified() -> None:
    model = em.create_model("espnet_p_2_q_3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make_deployable(model, "espnet_p_2_q_3", height=64, width=64)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_sizes_the_network_cannot_take_are_rejected() -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        make_deployable(em.create_model("espnetv2_s_0.5_pascal_256x256"), "espnetv2_s_0.5_pascal_256x256",
                        height=100, width=100)


@pytest.mark.weights
@pytest.mark.parametrize("model_id", [
    k if k in QUICK else pytest.param(k, marks=pytest.mark.slow) for k in sorted(em.ZOO)])
def test_deployable_matches_reference_and_exports(weights_dir, model_id: str) -> None:
    entry = em.get_entry(model_id)
    model = em.create_model(model_id, weights=checkpoint_path(weights_dir, model_id))
    deployable = make_deployable(model, entry)
    torch.manual_seed(0)
    x = torch.rand(1, 3, entry.input_height, entry.input_width)
    reference = reference_forward(model, entry, x)
    with torch.no_grad():
        out = deployable(x)
    rel = ((out - reference).abs().max() / reference.abs().max()).item()
    assert rel <= 1e-5, f"deployable differs from reference by {rel:.2e} of the largest logit"
    counts = exported_op_counts(export(deployable, x))
    assert "aten.adaptive_avg_pool2d.default" not in counts
    assert "aten.prelu.default" in counts and "aten.sym_size.int" not in counts
    print(f"\n{model_id}: max|diff|/max|logit| = {rel:.2e}\n{format_op_counts(counts)}")


@pytest.mark.parametrize("hw", [(16, 16), (8, 12)])
def test_pooling_folded_into_depthwise_is_exact(hw) -> None:
    from espnet_mobile.deploy import depthwise_then_pool, pool_then_depthwise

    conv = torch.nn.Conv2d(5, 5, 3, padding=1, groups=5, bias=False)
    x = torch.randn(1, 5, *hw)
    with torch.no_grad():
        assert torch.allclose(pool_then_depthwise((2, 2), conv)(x), conv(F.avg_pool2d(x, 2)), atol=1e-5)
        assert torch.allclose(depthwise_then_pool(conv, (2, 2))(x), F.avg_pool2d(conv(x), 2), atol=1e-5)


def test_box_pool_as_depthwise_is_average_pooling() -> None:
    from espnet_mobile.deploy import BoxPoolAsDepthwise

    x = torch.randn(1, 5, 16, 12)
    with torch.no_grad():
        assert torch.allclose(BoxPoolAsDepthwise(5, (2, 2))(x), F.avg_pool2d(x, 2), atol=1e-6)
        assert torch.allclose(BoxPoolAsDepthwise(5, (4, 3))(x), F.avg_pool2d(x, (4, 3)), atol=1e-6)


def test_espnetv2_depthwise_kernels_fit_one_xnnpack_pass() -> None:
    """No depth-wise conv above 25 taps (XNNPACK's largest one-pass depth-wise kernel, 5x5).

    A larger one runs as a one-channel-per-group GEMM: the 2x2 pooling folded into a 3x3
    conv (6x6) took ~4% of ESPNetv2's run time in LiteRT, fp32 and int8 alike.
    """
    model = em.create_model("espnetv2_s_0.5_pascal_256x256")
    deployable = make_deployable(model, "espnetv2_s_0.5_pascal_256x256")
    depthwise = [m for m in deployable.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert depthwise and max(m.kernel_size[0] * m.kernel_size[1] for m in depthwise) <= 25
    x = torch.rand(1, 3, 256, 256)
    reference = reference_forward(model, em.get_entry("espnetv2_s_0.5_pascal_256x256"), x)
    with torch.no_grad():
        out = deployable(x)
    assert float((out - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


def test_espnetv2_deployable_graph_has_no_average_pooling() -> None:
    model = em.create_model("espnetv2_s_0.5_pascal_256x256")
    counts = exported_op_counts(export(make_deployable(model, "espnetv2_s_0.5_pascal_256x256")))
    assert not any("avg_pool" in name for name in counts), counts


@pytest.mark.parametrize(("shuffle_groups", "c_in", "c_out", "groups"),
                         [(5, 50, 10, 10), (4, 24, 12, 6), (3, 12, 4, 2)])
def test_shuffle_folded_into_grouped_conv_is_exact(shuffle_groups: int, c_in: int, c_out: int, groups: int) -> None:
    from espnet_mobile.deploy import ChannelShuffleFixed, shuffle_into_grouped_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=True)
    x = torch.randn(1, c_in, 9, 7)
    dense = shuffle_into_grouped_conv(shuffle_groups, conv)
    assert dense.groups == 1 and dense.weight.shape == (c_out, c_in, 3, 3)
    with torch.no_grad():
        expected = conv(ChannelShuffleFixed(shuffle_groups, c_in, (9, 7))(x))
        assert torch.allclose(dense(x), expected, atol=1e-5)
        # Without the shuffle the grouped conv reads other channels: the fold is not the identity.
        assert not torch.allclose(dense(x), conv(x), atol=1e-3)


def test_espnetv2_pyramid_merge_has_no_shuffle() -> None:
    """The pyramid pools merge with one dense conv: no 5-D reshape/transpose is left in the graph."""
    model = em.create_model("espnetv2_s_0.5_pascal_256x256")
    program = export(make_deployable(model, "espnetv2_s_0.5_pascal_256x256"))
    ranks = {len(node.meta["val"].shape) for node in program.graph.nodes
             if node.op == "call_function" and hasattr(node.meta.get("val"), "shape")}
    assert ranks and max(ranks) <= 4, ranks
