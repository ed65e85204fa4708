"""Checkpoint resolution, download against a local HTTP server, and safe loading."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import pickle
import socket
import threading
from pathlib import Path

import pytest
import torch

import espnet_mobile as em
from espnet_mobile.errors import UserError
from espnet_mobile.zoo import weights as W


@pytest.fixture()
def served(tmp_path):
    """A checkpoint served over HTTP on 127.0.0.1, and a zoo entry pointing at it."""
    root = tmp_path / "server"
    (root / "sub").mkdir(parents=True)
    model = em.build_model(em.get_entry("espnetv2_s_0.5_pascal_256x256"))
    payload_path = root / "sub" / "espnetv2_s_0.5_pascal_256x256.pth"
    torch.save(model.state_dict(), payload_path)
    digest = hashlib.sha256(payload_path.read_bytes()).hexdigest()

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a, **k: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    entry = dataclasses.replace(em.get_entry("espnetv2_s_0.5_pascal_256x256"), sha256=digest)
    yield base, entry, payload_path
    server.shutdown()
    server.server_close()


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv(W.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _mirror(monkeypatch, base: str, entry) -> None:
    # Serve the file at the same relative path the pinned URL has.
    monkeypatch.setenv(W.MIRROR_ENV, base)
    monkeypatch.setattr(type(entry), "url", property(lambda self: f"{W.DOWNLOAD_HOST}/sub/{self.checkpoint}"))


def test_download_caches_a_good_file(served, isolated, monkeypatch, capsys) -> None:
    base, entry, payload = served
    _mirror(monkeypatch, base, entry)
    resolved = W.resolve_weights(entry)
    assert resolved.source == "download" and resolved.path == isolated / entry.checkpoint
    assert resolved.path.read_bytes() == payload.read_bytes()
    assert "downloading" in capsys.readouterr().err  # progress bar
    # Second time it comes from the cache, without the network.
    monkeypatch.setenv(W.MIRROR_ENV, "http://127.0.0.1:9")
    assert W.resolve_weights(entry).source == "cache"


def test_wrong_hash_is_discarded(served, isolated, monkeypatch) -> None:
    base, entry, _ = served
    _mirror(monkeypatch, base, entry)
    bad = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(UserError, match="sha256 .* expected 0000.*discarded"):
        W.resolve_weights(bad, progress=False)
    assert not isolated.exists() or not any(isolated.iterdir())


def test_server_down_says_how_to_supply_the_file(isolated, monkeypatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(W.MIRROR_ENV, f"http://127.0.0.1:{port}")
    entry = em.get_entry("espnet_p_2_q_3")
    with pytest.raises(UserError, match=r"cannot download .*pass its path \(--weights PATH\).*ESPNET_MOBILE_WEIGHTS"):
        W.resolve_weights(entry, progress=False)


def test_resolution_order_explicit_env_cache(tmp_path, isolated, monkeypatch, served) -> None:
    _, entry, payload = served
    env_dir = tmp_path / "env" / entry.weights_subdir
    env_dir.mkdir(parents=True)
    (env_dir / entry.checkpoint).write_bytes(payload.read_bytes())
    isolated.mkdir(parents=True)
    (isolated / entry.checkpoint).write_bytes(payload.read_bytes())
    monkeypatch.setenv(W.WEIGHTS_ENV, str(tmp_path / "env"))
    assert W.resolve_weights(entry, payload).source == "explicit"
    assert W.resolve_weights(entry).source == "env"
    monkeypatch.delenv(W.WEIGHTS_ENV)
    assert W.resolve_weights(entry).source == "cache"


def test_local_copy_with_wrong_hash_is_an_error(tmp_path, monkeypatch) -> None:
    entry = em.get_entry("espnet_p_2_q_3")
    folder = tmp_path / entry.weights_subdir
    folder.mkdir()
    (folder / entry.checkpoint).write_bytes(b"not the published file")
    monkeypatch.setenv(W.WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(UserError, match="expected 8f3eb198"):
        W.resolve_weights(entry, allow_download=False)


def test_truncated_checkpoint_is_a_clear_error(tmp_path) -> None:
    model = em.build_model(em.get_entry("espnetv2_s_0.5_pascal_256x256"))
    torch.save(model.state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated, corrupt or not a PyTorch file"):
        em.create_model("espnetv2_s_0.5_pascal_256x256", weights=tmp_path / "cut.pth")


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/espnet_mobile_pwned"),))


def test_pickled_code_is_never_executed(tmp_path) -> None:
    marker = Path("/tmp/espnet_mobile_pwned")
    marker.unlink(missing_ok=True)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": _Boom()}, f)
    with pytest.raises(UserError):
        W.load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_training_checkpoint_wrappers_are_unwrapped(tmp_path) -> None:
    model = em.build_model(em.get_entry("espnetv2_s_0.5_pascal_256x256"))
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": torch.tensor(3)}
    torch.save(wrapped, tmp_path / "train.pth")
    assert W.load_state_dict(tmp_path / "train.pth").keys() == model.state_dict().keys()
