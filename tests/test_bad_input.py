"""Bad input that used to escape as a traceback or a misleading message: one line, exit 2, nothing written."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

import espnet_mobile as em
from espnet_mobile import bundle as B
from espnet_mobile.__main__ import main as espnet_mobile_main


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height (and holds almost no data): what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    from espnet_mobile import predict

    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 30000, 30000)
    code = predict.main([str(bomb), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "too large to decode safely" in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _manifest() -> dict:
    entry = em.get_entry("espnetv2_s_0.5_pascal_256x256")
    return B.new_manifest(entry, entry.sha256, height=64, width=64)


def test_manifest_from_a_newer_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest["schema_version"] = 2
    with pytest.raises(em.UserError, match=r"newer espnet-mobile .*schema 2.*upgrade espnet-mobile"):
        B.validate(manifest, "manifest.json")


@pytest.mark.parametrize("name", ["..", ".", "a/b.pte", "a\\b.pte"])
def test_artifact_names_that_leave_the_bundle_are_refused(name: str) -> None:
    manifest = _manifest()
    manifest["artifacts"] = [{"file": name, "target": "tflite", "delegate": "cpu", "precision": "fp32",
                              "compute_units": ["CPU"], "sha256": "0" * 64, "bytes": 1, "tool_versions": {},
                              "executable_here": True, "cache_key": "k", "input_layout": "NCHW"}]
    with pytest.raises(em.UserError, match="artifacts/0/file"):
        B.validate(manifest, "manifest.json")
    manifest["artifacts"][0]["file"] = "model_tflite_fp32.tflite"
    B.validate(manifest, "manifest.json")  # the same record with a plain name is fine


def test_command_line_entry_point_lists_commands_and_refuses_unknown_ones(capsys) -> None:
    assert espnet_mobile_main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("convert", "evaluate", "parity", "qat", "zoo"):
        assert f"\n  {command}" in out
    assert espnet_mobile_main(["convrt"]) == 2
    assert "unknown command 'convrt'; choose from zoo, predict" in capsys.readouterr().err
    assert espnet_mobile_main(["zoo", "--profile", "nope"]) == 2  # dispatches to the command, which refuses
    assert "valid ids" in capsys.readouterr().err
