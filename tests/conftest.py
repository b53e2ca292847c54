import os
import tempfile
from pathlib import Path

import pytest

from imagejepa.cli import main

from .helpers import TINY_OVERRIDES

# Feature caches of the tests never land in the user's ~/.cache.
os.environ["IMAGEJEPA_CACHE"] = tempfile.mkdtemp(prefix="imagejepa-test-cache-")

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
