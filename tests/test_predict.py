"""predict: any image mode and size in, masks at the image's size out, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import espnet_mobile as em
from espnet_mobile import predict
from espnet_mobile.data.images import load_rgb

MODEL = "espnetv2_s_0.5_pascal_256x256"


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "random.pth"
    torch.manual_seed(0)
    torch.save(em.build_model(em.get_entry(MODEL)).state_dict(), path)
    return path


def _photo(h: int = 30, w: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_modes_are_normalized_to_rgb(tmp_path) -> None:
    rgb = _photo()
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert np.array_equal(load_rgb(tmp_path / "rgba.png"), rgb)
    grey = load_rgb(tmp_path / "grey.png")
    assert grey.shape == (30, 50, 3) and np.array_equal(grey[:, :, 0], grey[:, :, 2])
    deep = load_rgb(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and np.array_equal(deep[:, :, 1], rgb[:, :, 0])


def test_exif_orientation_is_applied(tmp_path) -> None:
    img = Image.fromarray(_photo(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "rotated.jpg").shape == (40, 20, 3)


def test_predict_writes_mask_and_overlay_at_image_size(tmp_path, random_checkpoint, capsys) -> None:
    Image.fromarray(_photo(30, 50)).save(tmp_path / "a.png")
    Image.fromarray(_photo(70, 20)).convert("L").save(tmp_path / "b.jpg")
    out = tmp_path / "out"
    code = predict.main([str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--model", MODEL,
                         "--weights", str(random_checkpoint), "--out", str(out)])
    assert code == 0
    mask = Image.open(out / "a_mask.png")
    assert mask.mode == "P" and mask.size == (50, 30)
    assert mask.getpalette()[3:6] == [128, 0, 0]  # VOC class 1 colour
    assert Image.open(out / "b_overlay.png").size == (20, 70)
    printed = capsys.readouterr().out
    shares = [float(s.split()[-1].rstrip("%")) for s in printed.splitlines()[0].split(": ", 1)[1].split(", ")]
    assert abs(sum(shares) - 100.0) < 0.5 + 0.1 * len(shares)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    (lambda p: p.write_text("hello"), "not a readable image"),
])
def test_bad_images_exit_2_with_one_line(tmp_path, capsys, random_checkpoint, make, message) -> None:
    path = tmp_path / "bad.png"
    make(path)
    assert predict.main([str(path), "--weights", str(random_checkpoint), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_unknown_model_and_corrupt_checkpoint_exit_2(tmp_path, capsys) -> None:
    Image.fromarray(_photo()).save(tmp_path / "a.png")
    assert predict.main([str(tmp_path / "a.png"), "--model", "espnetv9"]) == 2
    assert "valid ids" in capsys.readouterr().err
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02garbage")
    assert predict.main([str(tmp_path / "a.png"), "--model", MODEL, "--weights", str(tmp_path / "bad.pth")]) == 2
    assert "corrupt" in capsys.readouterr().err


@pytest.mark.weights
def test_pretrained_pascal_model_finds_the_people(weights_dir, images_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ESPNET_MOBILE_WEIGHTS", str(weights_dir))
    [result] = predict.predict_files([images_dir / "sample1.jpg"], "espnetv2_s_2.0_pascal_256x256", tmp_path)
    assert result.shares.get("person", 0) > 0.15
    assert result.mask.shape == load_rgb(images_dir / "sample1.jpg").shape[:2]


def test_cli_console_keeps_library_noise_out(monkeypatch) -> None:
    """run_cli hides torch's per-node pytree FutureWarning and root-logger INFO records, not warnings."""
    import logging
    import warnings

    from espnet_mobile import console, errors

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    root.handlers.clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            def body() -> int:
                warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
                warnings.warn("a real problem", UserWarning, stacklevel=1)
                logging.basicConfig(level=logging.INFO)  # what some libraries do; must not take effect
                return 0

            assert errors.run_cli(body) == 0
        assert [str(w.message) for w in caught] == ["a real problem"]
        assert not root.isEnabledFor(logging.INFO) and root.isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
