"""Checkpoint files are read without running code from them; bad files get clear messages."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from imagejepa.cli import main
from imagejepa.errors import UnreadableFileError, UnsafeFileError
from imagejepa.interop.safe_load import load_torch_file

from .helpers import official_save_dict, tiny_ijepa


class RunsCode:
    """Unpickling this calls ``os.system``: it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(params=["zip", "pickle-protocol-2", "pickle-protocol-4"])
def malicious(request, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "IN1K-vit.h.14-300e.pth.tar"
    if request.param == "zip":
        torch.save({"encoder": {"module.x": torch.ones(2)}, "epoch": RunsCode(marker)}, path)
    else:  # a plain pickle of plain objects and the payload
        payload = {"encoder": {}, "epoch": RunsCode(marker)}
        path.write_bytes(pickle.dumps(payload, protocol=int(request.param[-1])))
    return path, marker


def test_malicious_pickle_is_refused_and_runs_nothing(malicious):
    path, marker = malicious
    with pytest.raises(UnsafeFileError, match="refusing to load") as e:
        load_torch_file(path)
    assert "weights_only" in str(e.value) and "arbitrary code" in str(e.value)
    # Protocol 2 (torch.save's) reaches the GLOBAL opcode and names it; a protocol-4 pickle is
    # stopped earlier, at an opcode the tensor-only unpickler does not accept.
    assert "GLOBAL posix.system" in str(e.value) or "pickle opcode 149" in str(e.value)
    assert not marker.exists()


def test_convert_refuses_malicious_pickle_with_one_line(malicious, tmp_path, capsys):
    path, marker = malicious
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refusing to load" in err and "could run arbitrary code" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["eval", "linear"], ["embed"]])
def test_eval_and_embed_refuse_malicious_pickle_with_one_line(malicious, tmp_path, capsys, command):
    path, marker = malicious
    out = tmp_path / "features.npy"
    assert main([*command, "--checkpoint", str(path), "--data", "synthetic", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refusing to load" in err and "could run arbitrary code" in err
    assert err.startswith(f"imagejepa {command[0]}: error: ")
    assert not marker.exists() and not out.exists()


@pytest.fixture
def official_bytes():
    buf = __import__("io").BytesIO()
    torch.save(official_save_dict(tiny_ijepa()), buf)
    return buf.getvalue()


def test_truncated_checkpoint_fails_clearly(tmp_path, official_bytes, capsys):
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(official_bytes[: len(official_bytes) // 2])
    with pytest.raises(UnreadableFileError, match="truncated"):
        load_torch_file(path)
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is truncated" in err and "download or copy it again" in err


@pytest.mark.parametrize("command", [["eval", "knn"], ["embed"]])
def test_eval_and_embed_on_a_truncated_checkpoint_fail_with_one_line(tmp_path, official_bytes, capsys,
                                                                       command):
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(official_bytes[: len(official_bytes) // 2])
    out = tmp_path / "features.npy"
    assert main([*command, "--checkpoint", str(path), "--data", "synthetic", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is truncated" in err and not out.exists()


def test_truncated_legacy_format_fails_clearly(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"a": torch.randn(100, 100)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(UnreadableFileError, match="truncated or corrupt"):
        load_torch_file(path)


@pytest.mark.parametrize("content, message",
                         [(b"", "is empty"), (b"hello world", "not a PyTorch checkpoint")])
def test_empty_and_foreign_files(tmp_path, content, message):
    path = tmp_path / "f.pth.tar"
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError, match=message):
        load_torch_file(path)


def test_plain_checkpoints_still_load(tmp_path, official_bytes):
    path = tmp_path / "ok.pth.tar"
    path.write_bytes(official_bytes)
    obj = load_torch_file(path)
    assert obj["epoch"] == 7 and "module.patch_embed.proj.weight" in obj["encoder"]


def test_missing_file(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_torch_file(tmp_path / "nope.pth.tar")
    assert main(["convert", str(tmp_path / "nope.pth.tar"), str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
