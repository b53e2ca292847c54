"""The public API of ``import imagejepa``: every name resolves at run time, a type checker
sees the real classes and functions (not ``Any``), the command line still starts without
PyTorch, and ``examples/custom_loop.py`` (a loop of one's own) runs."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagejepa

from .helpers import child_env

ROOT = Path(__file__).parents[1]
SRC = Path(imagejepa.__file__).parents[1]
EXAMPLE = ROOT / "examples" / "custom_loop.py"


def type_checking_names() -> set[str]:
    """The names ``__init__.py`` imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(Path(imagejepa.__file__).read_text())
    blocks = [node for node in tree.body if isinstance(node, ast.If)
              and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1
    names = set()
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.dump(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: import it as itself, so it is re-exported"
            names.add(alias.name)
    return names


def test_type_checking_imports_and_lazy_names_agree():
    """The two lists of public names in ``__init__.py`` cannot drift apart."""
    assert type_checking_names() == set(imagejepa._PUBLIC) == set(imagejepa.__all__)
    tree = ast.parse(Path(imagejepa.__file__).read_text())
    modules = {a.name: node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.level == 1 for a in node.names}
    assert modules == imagejepa._PUBLIC


def test_every_public_name_resolves_to_the_package():
    for name in imagejepa.__all__:
        value = getattr(imagejepa, name)
        assert value.__module__.startswith("imagejepa."), (name, value.__module__)
        assert value.__name__ == name
    assert set(imagejepa.__all__) <= set(dir(imagejepa))
    with pytest.raises(AttributeError, match="no_such_name"):
        imagejepa.no_such_name  # noqa: B018


def test_the_command_line_starts_without_pytorch():
    code = "import sys, imagejepa, imagejepa.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


REVEALED = {
    "imagejepa.IJEPA": "def (encoder: imagejepa.models.vit.Encoder, predictor: imagejepa.models.predictor."
                       "Predictor, ",
    "imagejepa.MultiBlockMaskSampler": "-> imagejepa.masking.MultiBlockMaskSampler",
    "imagejepa.Masks.to": "device: Any, non_blocking: bool =) -> tuple[torch._tensor.Tensor, ",
    "imagejepa.Trainer": "-> imagejepa.train.trainer.Trainer",
    "imagejepa.load_encoder": "-> tuple[imagejepa.models.vit.Encoder, imagejepa.interop.bundle.Preprocess]",
    "imagejepa.linear_probe": "def (train_x: torch._tensor.Tensor, ",
    "imagejepa.prediction_loss": "-> torch._tensor.Tensor",
    "imagejepa.ema_update": "def (follower: torch.nn.modules.module.Module, ",
    "imagejepa.param_groups": "def (*modules: torch.nn.modules.module.Module) -> builtins.list[builtins.dict",
    "imagejepa.warmup_cosine": "def (step: builtins.float, warmup_steps: builtins.float, ",
    "imagejepa.Encoder": "-> imagejepa.models.vit.Encoder",
    "imagejepa.Config": "-> imagejepa.config.Config",
}


@pytest.mark.slow
def test_a_type_checker_sees_the_classes_and_functions(tmp_path):
    """mypy, on a user's file, reveals the real signatures of the lazily imported names."""
    probe = tmp_path / "probe.py"
    probe.write_text("import imagejepa\n\n" + "".join(f"reveal_type({e})\n" for e in REVEALED))
    # The package is read as installed, as a user's mypy reads it (it ships py.typed);
    # PyTorch is followed, so tensors are typed. The cache makes reruns take about a second
    # instead of about 20.
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nfollow_imports = silent\nignore_missing_imports = True\n")
    command = [sys.executable, "-m", "mypy", "--config-file", str(config),
               "--cache-dir", str(ROOT / ".mypy_cache"), "--show-traceback", str(probe)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "MYPYPATH": ""})
    revealed = re.findall(r'Revealed type is "(.*)"', out.stdout)
    assert len(revealed) == len(REVEALED), out.stdout + out.stderr
    for (expression, expected), found in zip(REVEALED.items(), revealed):
        assert expected.replace("builtins.", "") in found.replace("builtins.", ""), (expression, found)
        assert found != "Any", expression
    assert out.returncode == 0, out.stdout + out.stderr


def make_image_folder(root: Path, per_class: int = 40, size: int = 32) -> Path:
    """Two classes of ``size`` x ``size`` PNGs in ImageFolder's layout: stripes (random
    angle, frequency and phase) and blobs (a few Gaussian spots), each in a random tint."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    for label in ("blobs", "stripes"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            if label == "stripes":
                angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(3, 6), rng.uniform(0, 2 * np.pi)
                gray = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
            else:
                gray = np.zeros((size, size))
                for cy, cx, r in rng.uniform((0, 0, 0.06), (1, 1, 0.15), size=(rng.integers(2, 5), 3)):
                    gray += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r**2))
                gray = np.clip(gray, 0, 1)
            tint = rng.uniform(0.4, 1.0, size=3)
            pixels = gray[..., None] * tint + rng.normal(0, 0.05, size=(size, size, 3))
            pixels = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_the_custom_loop_example_runs(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(EXAMPLE), str(folder)], capture_output=True, text=True,
                         cwd=tmp_path, env=child_env(), timeout=300)
    seconds = time.monotonic() - start
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"^step +\d+ +loss ([\d.]+)", out.stdout, re.M)]
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0], out.stdout
    match = re.search(r"^linear probe top-1: ([\d.]+)% on (\d+) held-out images$", out.stdout, re.M)
    assert match, out.stdout
    assert int(match.group(2)) == 20
    assert float(match.group(1)) > 50, out.stdout  # two classes: chance is 50%
    assert seconds < 120, f"the example took {seconds:.0f} s"


def test_readme_api_section_lists_exactly_the_public_names():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    bullets = "\n".join(line for line in section.splitlines() if line.startswith(("- ", "  ")))
    listed = {name for name in re.findall(r"`([A-Za-z_]+)`", bullets)}
    assert listed == set(imagejepa.__all__), (listed ^ set(imagejepa.__all__))
