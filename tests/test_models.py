"""Reference models: architecture variants, strict loading, parameter counts."""

from __future__ import annotations

import pytest
import torch

import espnet_mobile as em
from espnet_mobile.errors import UserError
from espnet_mobile.models import ESPNet, ESPNetEncoder, ESPNetv2Segmentation
from espnet_mobile.models.espnetv2 import branch_dilations
from tests.conftest import checkpoint_path


@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_espnet_encoder_variants_give_logits_at_one_eighth(variant: str) -> None:
    model = ESPNetEncoder(num_classes=7, p=2, q=3, variant=variant).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 7, 8, 12)


def test_espnet_variants_differ_in_structure() -> None:
    sizes = {v: sum(p.numel() for p in ESPNetEncoder(20, 2, 3, variant=v).parameters()) for v in "ABC"}
    # B adds the concatenations (wider level-3 input and classifier), C the image channels.
    assert sizes["A"] < sizes["B"] < sizes["C"]


def test_espnet_uses_checkpoint_batchnorm_eps() -> None:
    eps = {m.eps for m in ESPNet(20, 2, 8).modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {1e-3}


@pytest.mark.parametrize("s", [0.5, 1.0, 1.5, 2.0])
def test_espnetv2_full_resolution_output(s: float) -> None:
    model = ESPNetv2Segmentation(num_classes=5, s=s).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 5, 64, 96)


def test_eesp_branch_dilations_follow_receptive_limit() -> None:
    assert branch_dilations(4, 13) == [1, 2, 3, 4]
    assert branch_dilations(4, 7) == [1, 1, 2, 3]
    assert branch_dilations(4, 5) == [1, 1, 1, 2]


def test_unknown_model_id_lists_valid_ids() -> None:
    with pytest.raises(UserError, match="valid ids: .*espnetv2_s_2.0_pascal_256x256"):
        em.create_model("espnetv3")


def test_random_init_roundtrip_through_checkpoint(tmp_path) -> None:
    model = em.create_model("espnetv2_s_0.5_pascal_256x256")
    torch.save(model.state_dict(), tmp_path / "ck.pth")
    again = em.create_model("espnetv2_s_0.5_pascal_256x256", weights=tmp_path / "ck.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert not again.training


def test_wrong_class_count_names_shape_mismatches(tmp_path) -> None:
    torch.save(ESPNetv2Segmentation(num_classes=20, s=0.5).state_dict(), tmp_path / "city.pth")
    with pytest.raises(UserError, match=r"shape mismatches: .*bu_dec_l4.merge_layer.3.weight"):
        em.create_model("espnetv2_s_0.5_pascal_256x256", weights=tmp_path / "city.pth")


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path) -> None:
    torch.save(ESPNet(20, 2, 3).state_dict(), tmp_path / "v1.pth")
    with pytest.raises(UserError) as err:
        em.create_model("espnetv2_s_0.5_pascal_256x256", weights=tmp_path / "v1.pth")
    message = str(err.value)
    assert "missing keys: base_net.level1.conv.weight" in message
    assert "unexpected keys: encoder.level1.conv.weight" in message


@pytest.mark.weights
@pytest.mark.parametrize(("model_id", "expected"), [
    ("espnet_p_2_q_8", 364_569), ("espnetv2_s_2.0_pascal_256x256", 789_253),
    ("espnet_p_2_q_8_camvid", 354_517), ("espnetc_p_2_q_8", 349_449),
])
def test_parameter_counts_equal_checkpoints(weights_dir, model_id: str, expected: int) -> None:
    path = checkpoint_path(weights_dir, model_id)
    state = torch.load(path, map_location="cpu", weights_only=True)
    in_checkpoint = sum(v.numel() for k, v in state.items()
                        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    model = em.create_model(model_id, weights=path)
    assert sum(p.numel() for p in model.parameters()) == in_checkpoint == expected


@pytest.mark.weights
@pytest.mark.parametrize("model_id", sorted(em.ZOO))
def test_every_checkpoint_loads_strictly_and_runs(weights_dir, model_id: str) -> None:
    entry = em.get_entry(model_id)
    model = em.create_model(model_id, weights=checkpoint_path(weights_dir, model_id))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, entry.num_classes, 64 // entry.output_stride, 64 // entry.output_stride)
    assert torch.isfinite(out).all()
