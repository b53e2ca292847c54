import os
import shutil
import tempfile
from pathlib import Path

import pytest

from imagejepa.cli import main

from .helpers import TINY_OVERRIDES

# Feature caches of the tests never land in the user's ~/.cache, and are removed afterwards.
TEST_CACHE = tempfile.mkdtemp(prefix="imagejepa-test-cache-")
os.environ["IMAGEJEPA_CACHE"] = TEST_CACHE


@pytest.fixture(scope="session", autouse=True)
def _remove_test_cache():
    yield
    shutil.rmtree(TEST_CACHE, ignore_errors=True)


@pytest.fixture
def big_tmp_path(tmp_path):
    """``tmp_path`` emptied as soon as the test ends: for tests that write gigabytes
    (full-size ViT-H weights), so a run does not accumulate them on disk."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)

DEMO_CONFIG = Path(__file__).parents[1] / "configs" / "fmnist_vit_tiny.yaml"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A run folder from a few steps of the tiny test model on synthetic data."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    args = ["pretrain", "--config", str(DEMO_CONFIG), "--run-dir", str(run)]
    for item in [*TINY_OVERRIDES, "train.max_steps=4"]:
        args += ["--set", item]
    assert main(args) == 0
    return run
