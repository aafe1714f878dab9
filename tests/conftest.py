"""Shared fixtures: the real photos and COCO data in ../shared, isolated caches."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# one session-wide local Ray cluster and tiny DETR for every Ray test module (a fixture imported
# into each module would be a separate "session" instance per module: ray.init twice)
from ray_helpers import ray_cluster, tiny_detr_fast  # noqa: E402,F401


def _share_the_cores() -> None:
    """Under ``pytest -n N`` each worker's torch gets its share of the cores (one thread each on
    this 2-core machine), so N workers do not run N × cores threads whose OpenMP teams wait at
    every barrier for a preempted thread. Tests that need more threads set them (and restore
    them); the processes tests start keep torch's default."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
IMAGES = SHARED_DATA / "images"
COCO = SHARED_DATA / "coco"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test touches the user's caches or the network-facing hub."""
    cache = tmp_path_factory.mktemp("vtcache")
    monkeypatch.setenv("VISIONTOOL_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("VISIONTOOL_DEBUG", raising=False)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"shared test data missing at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return IMAGES


@pytest.fixture(scope="session")
def coco_dir() -> Path:
    return COCO


@pytest.hookimpl(tryfirst=True)  # the marks must be there when xdist's own hook reads them into the node ids
def pytest_collection_modifyitems(config, items):
    """For ``pytest -n N --dist loadgroup`` (``make test``): a test file's tests stay on one worker
    (its module fixtures, often a model built or exported, are made once), and every Ray test file
    shares one worker, so the session has one local Ray cluster and no two Ray tests compete for
    the cores (some start clusters of their own)."""
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("ray" if name.startswith("test_ray_") else name))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """A worker of ``--dist loadgroup`` whose node ids carry no group: xdist has stopped grouping
    (as with pytest 9.2, pytest-dev/pytest-xdist#1386), and the suite would run each file's
    module fixtures on both workers and two Ray clusters at once. Say so instead of running slow."""
    if node.config.getvalue("dist") == "loadgroup" and ids and "@" not in ids[0]:
        pytest.exit("--dist loadgroup is not grouping the tests by file: this pytest and pytest-xdist disagree on "
                    "node ids (pytest-dev/pytest-xdist#1386); install the pytest that pyproject.toml's dev extra "
                    "asks for", returncode=pytest.ExitCode.USAGE_ERROR)
