"""The documentation builds with ``mkdocs build --strict`` (what ``make docs`` runs), its API
page is generated from the docstrings, and a broken link, anchor or reference fails it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

# The test extra installs mkdocs and mkdocstrings[python]: missing, the tests fail (never skip).


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True, text=True, timeout=300,
    )


def test_docs_build_strict_with_the_api_reference(tmp_path):
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("imagejepa.jepa.IJEPA", "imagejepa.masking.MultiBlockMaskSampler",
                 "imagejepa.models.Encoder", "imagejepa.interop.loading.load_encoder",
                 "imagejepa.train.trainer.Trainer", "imagejepa.eval.linear.linear_probe",
                 "imagejepa.config.OptimConfig"):
        assert f'id="{name}"' in api, f"the API page does not document {name}"
    assert ":class:`" not in api  # Sphinx roles in docstrings are shown as code, not raw
    commands = (tmp_path / "site" / "commands" / "index.html").read_text()
    assert 'id="imagejepa-pretrain"' in commands


@pytest.mark.parametrize("page, broken", [
    ("[x](missing.md)", "missing.md"),
    ("[x](commands.md#no-such-section)", "no-such-section"),
    ("::: imagejepa.no_such_module", "imagejepa.no_such_module"),
])
def test_docs_build_fails_on_a_broken_reference(tmp_path, page, broken):
    """A copy of the docs with one broken link, anchor or API reference fails the strict
    build, and the output names it."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "src").symlink_to(ROOT / "src")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + f"\n{page}\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert broken in result.stdout + result.stderr
