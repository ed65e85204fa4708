"""Shared fixtures: where the authors' checkpoints and photos are, and the slow-test switch.

Checkpoints, photos and labelled datasets come from $ESPNET_MOBILE_WEIGHTS,
$ESPNET_MOBILE_IMAGES and $ESPNET_MOBILE_DATASETS (.ci/run points them at ../shared).
Without them those tests skip with the reason; under CI=true a missing folder is a
failure, never a skip.
Tests marked ``slow`` run with ``--slow`` or under CI=true.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run tests marked slow (CI does)")


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker, share the cores among the workers: with every worker on
    torch's default (one thread per core) the OpenMP pools oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # subprocesses the tests start
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow") or IN_CI:
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (CI runs it)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _shared_folder(env: str, what: str) -> Path:
    value = os.environ.get(env)
    if not value or not Path(value).is_dir():
        message = f"{what} not available: set {env} to the folder (.ci/run uses ../shared)"
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return Path(value)


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return _shared_folder("ESPNET_MOBILE_WEIGHTS", "the authors' checkpoints")


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return _shared_folder("ESPNET_MOBILE_IMAGES", "the sample photos")


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """Labelled datasets (``camvid/`` with train, val and their annotations)."""
    folder = _shared_folder("ESPNET_MOBILE_DATASETS", "the labelled datasets")
    if not (folder / "camvid" / "val").is_dir():
        message = f"{folder} has no camvid/val; ESPNET_MOBILE_DATASETS must hold the CamVid split"
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return folder


def checkpoint_path(weights_dir: Path, model_id: str) -> Path:
    from espnet_mobile.zoo import get_entry

    entry = get_entry(model_id)
    return weights_dir / entry.weights_subdir / entry.checkpoint


#: A small model for tests whose cost is an ExecuTorch lowering per conversion: ESPNet-C's exported graph
#: has 217 nodes against ESPNetv2 s=0.5's 926, so each lowering takes about a quarter of the time.
SMALL_LOWERING_MODEL = "espnetc_p_2_q_3"


@pytest.fixture(scope="session")
def small_lowering_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Randomly initialised (seed 0) weights of SMALL_LOWERING_MODEL: no checkpoint needed."""
    import torch

    import espnet_mobile as em

    path = tmp_path_factory.mktemp("weights") / f"{SMALL_LOWERING_MODEL}_random.pth"
    torch.manual_seed(0)
    torch.save(em.build_model(em.get_entry(SMALL_LOWERING_MODEL)).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic 80x96 scenes as PNG files: calibration and check photos for small conversions."""
    from PIL import Image

    from espnet_mobile.data import synthetic

    folder = tmp_path_factory.mktemp("photos")
    for i, (rgb, _) in enumerate(synthetic.scenes(6, 80, 96, 21)):
        Image.fromarray(rgb).save(folder / f"scene{i}.png")
    return folder
