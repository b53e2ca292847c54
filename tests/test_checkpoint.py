"""Tests of atomic checkpoints, their discovery and safe loading."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from imagejepa import checkpoint as ckpt
from imagejepa.config import from_dict
from imagejepa.interop.loading import load_encoder
from imagejepa.jepa import build_ijepa


def sample_tensors(step: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {
        "encoder.w": torch.randn(3, 4, generator=g),
        "encoder.b": torch.randn(4, generator=g),
        "target_encoder.w": torch.randn(3, 4, generator=g),
        "predictor.mask_token": torch.randn(1, 1, 4, generator=g),
    }


def sample_state(step: int = 0) -> dict:
    return {
        "step": step,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3}]},
        "rng": {"torch": torch.get_rng_state()},
    }


def save(run, step, keep_last=None):
    return ckpt.save_checkpoint(run / "checkpoints", step, sample_tensors(step), sample_state(step),
                                {"step": step, "epoch": 0}, keep_last=keep_last)


def test_save_writes_all_files(tmp_path):
    run = tmp_path / "run"
    folder = save(run, 20)
    assert folder == run / "checkpoints" / "step_00000020"
    for name in ("model.safetensors", "train_state.pt", "meta.json"):
        assert (folder / name).is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000020"
    assert json.loads((folder / "meta.json").read_text()) == {"step": 20, "epoch": 0}
    # Nothing temporary left behind.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000020"]


def test_latest_and_resolve(tmp_path):
    run = tmp_path / "run"
    assert ckpt.latest_checkpoint(run) is None
    save(run, 5)
    folder = save(run, 10)
    assert ckpt.latest_checkpoint(run) == folder
    assert ckpt.latest_checkpoint(run / "checkpoints") == folder
    for path in (run, run / "checkpoints", folder, str(folder)):
        assert ckpt.resolve_checkpoint(path) == folder
    # An older checkpoint folder given directly is used as is.
    assert ckpt.resolve_checkpoint(run / "checkpoints" / "step_00000005").name == "step_00000005"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "elsewhere")


def test_round_trip_and_prefix(tmp_path):
    folder = save(tmp_path / "run", 3)
    expected = sample_tensors(3)
    tensors = ckpt.load_tensors(folder)
    assert set(tensors) == set(expected)
    for k, v in expected.items():
        assert torch.equal(tensors[k], v)
    enc = ckpt.load_tensors(folder, "encoder")
    assert set(enc) == {"w", "b"}  # not target_encoder.*: the prefix ends at a dot
    assert torch.equal(enc["w"], expected["encoder.w"])
    assert set(ckpt.load_tensors(folder, "target_encoder")) == {"w"}
    assert set(ckpt.load_tensors(folder, "predictor")) == {"mask_token"}
    state = ckpt.load_train_state(folder)
    assert state["step"] == 3
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], torch.ones(3))
    assert torch.equal(state["rng"]["torch"], sample_state()["rng"]["torch"])
    assert ckpt.load_meta(folder) == {"step": 3, "epoch": 0}


def test_resave_same_step_replaces(tmp_path):
    run = tmp_path / "run"
    save(run, 7)
    folder = ckpt.save_checkpoint(run / "checkpoints", 7, {"x": torch.zeros(2)}, {}, {"v": 2})
    assert set(ckpt.load_tensors(folder)) == {"x"}
    assert ckpt.load_meta(folder) == {"v": 2}


def test_keep_last_prunes_older(tmp_path):
    run = tmp_path / "run"
    for step in range(1, 6):
        save(run, step, keep_last=2)
    names = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert names == ["step_00000004", "step_00000005"]
    assert ckpt.latest_checkpoint(run).name == "step_00000005"
    # Pruning never removes the checkpoint just written, even when it sorts first.
    folder = save(run, 2, keep_last=1)
    assert folder.is_dir() and ckpt.latest_checkpoint(run) == folder


def test_leftover_tmp_folder_is_ignored(tmp_path):
    run = tmp_path / "run"
    good = save(run, 10)
    # Simulate a crash while writing step 20: a partial temporary folder remains.
    partial = run / "checkpoints" / ".tmp-step_00000020-deadbeef"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(run) == good
    assert ckpt.resolve_checkpoint(run) == good
    # Later saves and pruning are unaffected by it.
    newer = save(run, 30, keep_last=1)
    assert ckpt.latest_checkpoint(run) == newer
    assert not good.exists()
    assert partial.exists()


def test_crash_during_save_keeps_previous(tmp_path, monkeypatch):
    run = tmp_path / "run"
    good = save(run, 10)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save(run, 20)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(run) == good
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest", "step_00000010"]  # the temporary folder was removed


def test_latest_naming_incomplete_folder_is_none(tmp_path):
    d = tmp_path / "checkpoints"
    (d / "step_00000001").mkdir(parents=True)
    (d / "latest").write_text("step_00000001\n")
    assert ckpt.latest_checkpoint(d) is None


class Payload:
    """A custom class: unpickling it would run arbitrary code paths."""

    def __init__(self):
        self.value = 42


def test_load_train_state_refuses_pickled_objects(tmp_path):
    folder = save(tmp_path / "run", 1)
    torch.save({"step": 1, "payload": Payload()}, folder / "train_state.pt")
    with pytest.raises(ckpt.CheckpointError, match="refused to load.*Payload") as info:
        ckpt.load_train_state(folder)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    # The same file loads with full unpickling: the refusal comes from weights_only.
    assert torch.load(folder / "train_state.pt", weights_only=False)["payload"].value == 42


@pytest.mark.parametrize("which", ["target", "context"])
def test_load_encoder_round_trip(tmp_path, which):
    cfg = from_dict({
        "model": {"arch": "vit_tiny", "patch_size": 8, "img_size": 32, "in_chans": 1,
                  "depth": 1, "pred_depth": 1, "pred_dim": 48},
        "mask": {"num_targets": 2, "min_keep": 2},
        "data": {"dataset": "synthetic"},
    })
    torch.manual_seed(0)
    model = build_ijepa(cfg)
    with torch.no_grad():  # make the two encoders differ
        for p in model.encoder.parameters():
            p.add_(0.1)
    tensors = {f"{name}.{k}": v for name in ("encoder", "target_encoder", "predictor")
               for k, v in getattr(model, name).state_dict().items()}
    meta = {"step": 1, "config": cfg.to_dict(), "mean": [0.5], "std": [0.25]}
    ckpt.save_checkpoint(tmp_path / "run" / "checkpoints", 1, tensors, {"step": 1}, meta)

    encoder, pre = load_encoder(tmp_path / "run", which=which)
    source = model.target_encoder if which == "target" else model.encoder
    ours, theirs = encoder.state_dict(), source.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert (pre.size, pre.in_chans, pre.mean, pre.std) == (32, 1, (0.5,), (0.25,))
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(encoder(x), source(x))
    with pytest.raises(ValueError, match="which"):
        load_encoder(tmp_path / "run", which="online")


def test_keep_last_plus_keep_every(tmp_path):
    run = tmp_path / "run"
    for step in range(1, 11):
        ckpt.save_checkpoint(run / "checkpoints", step, sample_tensors(step), sample_state(step),
                             {"step": step}, keep_last=2, keep_every=4)
    names = [p.name for p in ckpt.complete_folders(run / "checkpoints")]
    assert names == ["step_00000004", "step_00000008", "step_00000009", "step_00000010"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_recover_tidies_an_interrupted_save(tmp_path):
    d = tmp_path / "checkpoints"
    save(tmp_path, 3)
    save(tmp_path, 5)
    # Killed in a re-save of step 5, between moving the old folder aside and the new one in:
    os.rename(d / "step_00000005", d / ".old-step_00000005-1234abcd")
    (d / ".tmp-step_00000007-deadbeef").mkdir()  # killed while writing step 7
    (d / ".del-step_00000001-cafef00d").mkdir()  # killed while deleting step 1
    tidied = ckpt.recover(d)
    assert sorted(tidied) == [".del-step_00000001-cafef00d", ".old-step_00000005-1234abcd",
                              ".tmp-step_00000007-deadbeef"]
    assert sorted(p.name for p in d.iterdir()) == ["latest", "step_00000003", "step_00000005"]
    assert ckpt.find_checkpoint(tmp_path).name == "step_00000005"


def test_find_checkpoint_falls_back_only_when_told(tmp_path):
    save(tmp_path, 3)
    save(tmp_path, 5)
    bad = tmp_path / "checkpoints" / "step_00000005" / "meta.json"
    bad.write_text('{"step": 6}')
    with pytest.raises(ckpt.CheckpointError, match=f"{bad}: .*bytes|{bad}: sha256"):
        ckpt.find_checkpoint(tmp_path)
    warnings = []
    assert ckpt.find_checkpoint(tmp_path, fallback=True, warn=warnings.append).name == "step_00000003"
    assert len(warnings) == 1 and "step_00000005" in warnings[0] and str(bad) in warnings[0]
    (tmp_path / "checkpoints" / "step_00000003" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="passes verification"):
        ckpt.find_checkpoint(tmp_path, fallback=True)


def test_train_state_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match=r"train_state\['payload'\]: Payload is not a tensor"):
        ckpt.save_checkpoint(tmp_path, 1, sample_tensors(), {"step": 1, "payload": Payload()}, {})
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary folder
