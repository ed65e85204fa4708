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
