"""Fault injection: kill -9 at random and chosen moments, stop signals, damaged checkpoints,
a full disk, broken image files, NaN, bad configuration and a pickle bomb.

Every run here is the tiny CPU fp32 model of ``helpers.TINY_OVERRIDES`` on one thread (the
killed subprocesses too), so an interrupted-then-resumed run can be compared with an
uninterrupted one to 1e-6.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagejepa import checkpoint as ckpt
from imagejepa.cli import main
from imagejepa.config import load_config
from imagejepa.train.preempt import PREEMPTED_EXIT, Preempted, StopSignals
from imagejepa.train.trainer import NonFiniteError, Trainer

from .helpers import ROOT, TINY_OVERRIDES, catches, child_env, final_tensors, losses, metric_rows, quiet

STEPS = 10  # the reference run's length; checkpoints every 2 steps, the last 2 kept
RUN = TINY_OVERRIDES + ["train.checkpoint_every_steps=2", "train.keep_last=2"]


# -- helpers --------------------------------------------------------------------------------
def config(*extra):
    return load_config(None, RUN + list(extra))


def cli_args(run_dir, *extra):
    """``pretrain`` arguments for the tiny run; the config file is written by :func:`tiny_yaml`."""
    args = ["pretrain", "--config", str(tiny_yaml(Path(run_dir).parent)), "--run-dir", str(run_dir)]
    for item in extra:
        args += ["--set", item]
    return args


def tiny_yaml(folder: Path) -> Path:
    path = folder / "tiny.yaml"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(config().to_yaml())
    return path


def assert_same_run(run_dir: Path, reference) -> None:
    """Same losses (1e-6) and same final weights (1e-6) as the uninterrupted run."""
    ref_losses, ref_tensors = reference
    got = losses(run_dir)
    assert len(got) == len(ref_losses)
    assert max(abs(a - b) for a, b in zip(got, ref_losses)) <= 1e-6
    tensors = final_tensors(run_dir)
    assert tensors.keys() == ref_tensors.keys()
    for k in ref_tensors:
        torch.testing.assert_close(tensors[k], ref_tensors[k], rtol=0, atol=1e-6, msg=k)


def assert_checkpoints_sound(run_dir: Path) -> None:
    """``latest`` names a checkpoint that verifies, and so does every ``step_*`` folder."""
    d = run_dir / "checkpoints"
    latest = ckpt.find_checkpoint(run_dir)  # raises if latest is missing or damaged
    assert latest.name == (d / "latest").read_text().strip()
    for folder in ckpt.complete_folders(d):
        ckpt.verify_checkpoint(folder)


def error_line(err: str) -> str:
    """The error a failed command printed: its last line, and the only one saying ``error:``."""
    lines = err.strip().splitlines()
    assert sum("error:" in line for line in lines) == 1, err
    return lines[-1]


def continue_run(run_dir: Path, steps: int = STEPS) -> None:
    """What a user does after a crash: resume when a checkpoint exists, else start again."""
    resume = (run_dir / "checkpoints" / "latest").exists()
    Trainer(config(f"train.max_steps={steps}"), run_dir, resume=resume, log=quiet, warn=quiet).fit()


def wait_for_rows(proc: subprocess.Popen, run_dir: Path, rows: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(metric_rows(run_dir)) < rows:
        if proc.poll() is not None:
            raise AssertionError(f"training ended (code {proc.returncode}) before {rows} steps: "
                                 f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {rows} steps within {timeout} s")
        time.sleep(0.005)


def start_training(run_dir: Path, *extra, driver: Path | None = None, driver_args=()):
    prefix = [sys.executable, str(driver), *driver_args] if driver else [sys.executable, "-m", "imagejepa"]
    return subprocess.Popen(prefix + cli_args(run_dir, *extra), env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a cluster job


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Same thread count as the subprocesses: the comparisons to 1e-6 see one reduction order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of STEPS steps: its losses and final weights."""
    run = tmp_path_factory.mktemp("reference")
    Trainer(config(f"train.max_steps={STEPS}"), run, log=quiet, warn=quiet).fit()
    return losses(run), final_tensors(run)


# -- kill -9 --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_kill_9_at_a_random_moment_then_resume_matches(tmp_path, reference, seed):
    rng = random.Random(seed)
    run = tmp_path / "run"
    # Metrics written every 5 steps: the rows of checkpointed steps must survive the kill.
    proc = start_training(run, f"train.max_steps={STEPS}", "train.log_every=5")
    wait_for_rows(proc, run, rng.randint(1, STEPS - 3))
    time.sleep(rng.uniform(0.0, 0.1))  # lands anywhere: in a step, a save, a metrics write
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    if (run / "checkpoints" / "latest").exists():
        assert_checkpoints_sound(run)
    continue_run(run)
    assert_same_run(run, reference)
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


# Kill points inside save_checkpoint: (function replaced, how many calls before dying,
# the checkpoint `latest` must name afterwards). The process kills itself with SIGKILL, a
# real kill -9, just before the call.
KILL_POINTS = {
    # model.safetensors of step 4 written, train_state.pt not yet
    "after_weights": ("torch", "save", 2, "step_00000002"),
    # every file of step 4 written; the manifest is being computed
    "in_manifest": ("ckpt", "sha256_of", 5, "step_00000002"),
    # step 4 complete in its temporary folder, not yet renamed into place
    "before_rename": ("os", "rename", 2, "step_00000002"),
    # step 4 in place, `latest` still names step 2
    "before_latest": ("ckpt", "_point_latest", 2, "step_00000002"),
    # step 6 saved; step 2 renamed out of the way for deletion, not yet deleted
    "in_prune": ("shutil", "rmtree", 1, "step_00000006"),
}

DRIVER = """
import os, shutil, signal, sys
import torch
import imagejepa.checkpoint as ckpt
from imagejepa.cli import main

owner, name, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
target = {"torch": torch, "ckpt": ckpt, "os": os, "shutil": shutil}[owner]
real = getattr(target, name)
calls = 0

def die_on_nth_call(*args, **kwargs):
    global calls
    calls += 1
    if calls == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(target, name, die_on_nth_call)
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize("point", [
    "before_rename",
    "before_rename_in_the_background",
    pytest.param("after_weights", marks=pytest.mark.slow),
    pytest.param("in_manifest", marks=pytest.mark.slow),
    pytest.param("before_latest", marks=pytest.mark.slow),
    pytest.param("in_prune", marks=pytest.mark.slow),
])
def test_kill_9_while_writing_a_checkpoint(tmp_path, reference, point):
    background = point.endswith("_in_the_background")  # train.async_checkpoint: the writer's thread
    owner, name, nth, expected_latest = KILL_POINTS[point.removesuffix("_in_the_background")]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = tmp_path / "run"
    proc = start_training(run, f"train.max_steps={STEPS}", "train.log_every=5",
                          f"train.async_checkpoint={str(background).lower()}", driver=driver,
                          driver_args=(owner, name, str(nth)))
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert_checkpoints_sound(run)
    assert ckpt.find_checkpoint(run).name == expected_latest
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith((".tmp", ".del"))]
    if point.removesuffix("_in_the_background") in ("after_weights", "in_manifest", "before_rename",
                                                    "in_prune"):
        assert leftovers, "the kill should have left a partial folder behind"
    continue_run(run)
    assert_same_run(run, reference)
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_kill_9_while_resuming_keeps_config_and_metrics(tmp_path, reference):
    """On --resume, config.yaml and metrics.csv are rewritten; a kill then spoils neither."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = tmp_path / "run"
    Trainer(config("train.max_steps=4"), run, log=quiet, warn=quiet).fit()
    # os.replace #1 puts the new config.yaml in place, #2 would do the same for metrics.csv.
    resume = ["pretrain", "--run-dir", str(run), "--resume", "--set", f"train.max_steps={STEPS}"]
    proc = subprocess.run([sys.executable, str(driver), "os", "replace", "2", *resume],
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(metric_rows(run)) == 4
    assert load_config(run / "config.yaml").train.max_steps == STEPS
    continue_run(run)
    assert_same_run(run, reference)


# -- stop signals ---------------------------------------------------------------------------
@pytest.mark.parametrize("target, workers", [
    ("process", 0),
    # A cluster signals every process of the job: DataLoader workers must survive it too.
    pytest.param("process group", 1, marks=pytest.mark.slow),
])
def test_sigterm_finishes_the_step_checkpoints_and_exits_75(tmp_path, reference, target, workers):
    run = tmp_path / "run"
    # A long run with no periodic checkpoint: the only checkpoint is the one SIGTERM causes.
    proc = start_training(run, "train.max_steps=1000", "train.checkpoint_every_steps=null",
                          f"data.num_workers={workers}")
    wait_for_rows(proc, run, 2)
    if target == "process":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT, err[-2000:]
    stopped = len(metric_rows(run))  # every finished step is in metrics.csv ...
    assert 2 <= stopped < STEPS
    assert f"SIGTERM received: stopped after step {stopped}" in err
    assert "--resume" in err.strip().splitlines()[-1]
    assert ckpt.find_checkpoint(run).name == f"step_{stopped:08d}"  # ... and in the checkpoint
    assert main(["pretrain", "--run-dir", str(run), "--resume", "--set", f"train.max_steps={STEPS}"]) == 0
    assert_same_run(run, reference)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status (Linux)")
@pytest.mark.parametrize("resume", [False, True])
def test_sigterm_during_start_up_exits_75(tmp_path, resume):
    """A signal that arrives while PyTorch loads and the run is built (minutes for a large
    dataset or model) must still end in exit 75, the code a SLURM script requeues on."""
    run = tmp_path / "run"
    if resume:
        Trainer(config("train.max_steps=2"), run, log=quiet, warn=quiet).fit()
    rows_before = len(metric_rows(run)) if resume else 0
    command = [sys.executable, "-m", "imagejepa", *cli_args(run, "train.max_steps=4")]
    proc = subprocess.Popen(command + (["--resume"] if resume else []), env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not catches(proc.pid, signal.SIGTERM):  # the command line has taken charge of it
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)  # while `import torch` and the build are still ahead
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT, err[-2000:]
    if resume:
        assert err.strip().splitlines()[-1] == (
            "imagejepa pretrain: SIGTERM received: stopped before training on from step 2, "
            "nothing new to save; continue with --resume")
        assert ckpt.find_checkpoint(run).name == "step_00000002"
    else:
        assert err.strip().splitlines()[-1] == (
            "imagejepa pretrain: SIGTERM received: stopped before the first step, nothing to save; "
            "start the run again")
        assert not any((run / "checkpoints").glob("step_*"))
    assert len(metric_rows(run)) == rows_before  # not one step was taken


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT])
def test_signal_during_a_step_checkpoints_after_it(tmp_path, sig):
    """SLURM's early warning (--signal=USR1@N) and Ctrl-C behave like SIGTERM."""
    before = signal.getsignal(sig)
    trainer = Trainer(config("train.max_steps=8", "train.checkpoint_every_steps=null"), tmp_path,
                      log=quiet, warn=quiet)
    real_step = trainer.train_step

    def signal_in_step_2(images, step):
        if step == 2:
            os.kill(os.getpid(), sig)  # arrives while step 2 is being computed
        return real_step(images, step)

    trainer.train_step = signal_in_step_2
    with pytest.raises(Preempted) as info:
        trainer.fit()
    assert info.value.signal_name == sig.name and info.value.step == 3
    assert info.value.checkpoint.name == "step_00000003"
    assert ckpt.find_checkpoint(tmp_path).name == "step_00000003"
    assert len(metric_rows(tmp_path)) == 3
    assert signal.getsignal(sig) == before  # handlers are restored after training


def test_sigterm_during_a_periodic_save_stops_after_it(tmp_path, monkeypatch):
    real_save = ckpt.save_checkpoint

    def signalled_save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 2's checkpoint is written
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", signalled_save)
    with pytest.raises(Preempted) as info:
        Trainer(config("train.max_steps=8"), tmp_path, log=quiet, warn=quiet).fit()
    # That save completes and is the one the exit points to: no extra step, no second save.
    assert info.value.step == 2 and info.value.checkpoint.name == "step_00000002"
    assert len(metric_rows(tmp_path)) == 2
    assert [p.name for p in ckpt.complete_folders(tmp_path / "checkpoints")] == ["step_00000002"]
    ckpt.verify_checkpoint(info.value.checkpoint)


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"{PREEMPTED_EXIT}  pre-empted: SIGTERM, SIGINT or SIGUSR1" in out and "--fallback" in out


def test_second_ctrl_c_interrupts_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)  # ignored while the checkpoint is written
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
    assert stop.received == "SIGINT"


# -- checkpoint integrity -------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_lists_size_and_sha256(tmp_path):
    Trainer(config("train.max_steps=2"), tmp_path, log=quiet).fit()
    folder = ckpt.find_checkpoint(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 2
    assert set(manifest["files"]) == {"model.safetensors", "train_state.pt", "meta.json"}
    for name, entry in manifest["files"].items():
        assert entry == {"size": (folder / name).stat().st_size, "sha256": sha256(folder / name)}


def test_damaged_checkpoint_is_named_and_fallback_is_opt_in(tmp_path, capsys, reference):
    run = tmp_path / "run"
    assert main(cli_args(run, "train.max_steps=4")) == 0
    damaged = run / "checkpoints" / "step_00000004" / "model.safetensors"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern, same size
    damaged.write_bytes(bytes(data))
    capsys.readouterr()

    resume = ["pretrain", "--run-dir", str(run), "--resume", "--set", f"train.max_steps={STEPS}"]
    assert main(resume) == 1
    err = error_line(capsys.readouterr().err)
    assert str(damaged) in err and "sha256" in err and "--fallback" in err

    assert main(resume + ["--fallback"]) == 0
    captured = capsys.readouterr()
    assert "skipping checkpoint step_00000004" in captured.err and str(damaged) in captured.err
    assert "resumed from" in captured.out and "step_00000002" in captured.out
    assert_same_run(run, reference)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "bytes, the manifest says"),
    ("delete", "missing (listed in the manifest)"),
    ("no_manifest", "manifest.json: missing"),
])
def test_verification_names_the_bad_file(tmp_path, damage, message):
    folder = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, {"step": 1}, {"step": 1})
    state = folder / "train_state.pt"
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:-5])
    elif damage == "delete":
        state.unlink()
    else:
        (folder / "manifest.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match=re.escape(message)) as info:
        ckpt.resolve_checkpoint(folder)
    name = "manifest.json" if damage == "no_manifest" else "train_state.pt"
    assert str(folder / name) in str(info.value)


@pytest.mark.parametrize("background", [False, True])
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch, background):
    """Also when the checkpoint is written in the background (train.async_checkpoint): its
    error stops the run at the next save, the one before it intact."""
    run = tmp_path / "run"
    real_save_file = ckpt.save_file

    def fills_the_disk_at_step_4(tensors, filename, *args, **kwargs):
        if "step_00000004" in filename:
            Path(filename).write_bytes(b"\0" * 100)  # a partial write, then ENOSPC
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", fills_the_disk_at_step_4)
    assert main(cli_args(run, "train.max_steps=8", f"train.async_checkpoint={str(background).lower()}")) == 1
    err = error_line(capsys.readouterr().err)
    assert "could not write the checkpoint of step 4" in err and "No space left on device" in err
    assert "step_00000002" in err and "is intact" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000002"]
    assert_checkpoints_sound(run)


# -- bad data -------------------------------------------------------------------------------
BAD_FILES = ("cat/empty.png", "cat/corrupt.jpg", "dog/truncated.png", "dog/notes.jpg")


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def broken_image_folder(root: Path) -> Path:
    """16 files in 2 classes: 4 broken, 5 in awkward formats (CMYK, 16-bit, RGBA, grey,
    palette), one tiny (3x2), the rest plain RGB of assorted sizes."""
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
    rgb = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for i, (h, w) in enumerate([(40, 30), (24, 48), (33, 33), (50, 20)]):
        Image.fromarray(rgb(h, w)).save(root / ("cat" if i % 2 else "dog") / f"rgb{i}.png")
    Image.fromarray(rgb(36, 36)).save(root / "dog" / "photo.jpg", quality=90)
    Image.fromarray(rgb(2, 3)).save(root / "cat" / "tiny.png")
    Image.fromarray(rgb(32, 40)).convert("CMYK").save(root / "cat" / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65536, (30, 30), dtype=np.uint16)).save(root / "dog" / "gray16.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8)).save(root / "cat" / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(root / "dog" / "gray.png")
    Image.fromarray(rgb(30, 30)).convert("P").save(root / "cat" / "palette.png")
    Image.fromarray(rgb(30, 30)).save(root / "dog" / "extra.png")
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "corrupt.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    whole = png_bytes(rgb(40, 40))
    (root / "dog" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "dog" / "notes.jpg").write_text("not an image, despite the name\n")
    assert sum(1 for _ in root.rglob("*.*")) == 16
    return root


def test_broken_files_are_skipped_named_and_counted(tmp_path, capsys):
    images = broken_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    # One epoch (16 files, batch 8, 2 steps) visits every file once.
    args = cli_args(run, f"data.dataset=imagefolder:{images}", "data.max_bad_fraction=0.3",
                    "train.max_steps=2", "optim.epochs=4")
    assert main(args) == 0
    err = capsys.readouterr().err
    named = {line.split("skipped unreadable image ")[1].split(" (")[0]
             for line in err.splitlines() if "skipped unreadable image" in line}
    assert named == {str(images / f) for f in BAD_FILES}
    rows = metric_rows(run)
    assert len(rows) == 2 and sum(int(r["skipped_images"]) for r in rows) >= len(BAD_FILES)
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_too_many_broken_files_stop_the_run(tmp_path, capsys):
    images = broken_image_folder(tmp_path / "images")
    # The default cap: 1% of the files (here: none may be broken).
    assert main(cli_args(tmp_path / "run", f"data.dataset=imagefolder:{images}",
                         "train.max_steps=2", "optim.epochs=4")) == 1
    err = error_line(capsys.readouterr().err)
    assert "image files are unreadable, more than data.max_bad_fraction=0.01" in err
    assert any(str(images / f) in err for f in BAD_FILES)
    # on_error=raise: the first broken file stops the run, by name (also from a worker).
    for workers in (0, 1):
        assert main(cli_args(tmp_path / f"run{workers}", f"data.dataset=imagefolder:{images}",
                             "data.on_error=raise", f"data.num_workers={workers}",
                             "train.max_steps=2", "optim.epochs=4")) == 1
        err = error_line(capsys.readouterr().err)
        assert any(f"error: {images / f}: " in err for f in BAD_FILES), err


@pytest.mark.slow
def test_resume_is_exact_with_broken_files(tmp_path):
    """Which sample replaces a broken one depends only on (seed, epoch, index)."""
    images = broken_image_folder(tmp_path / "images")
    extra = [f"data.dataset=imagefolder:{images}", "data.max_bad_fraction=0.3", "optim.epochs=4",
             "train.checkpoint_every_steps=3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    Trainer(config(*extra, "train.max_steps=5"), straight, log=quiet, warn=quiet).fit()
    Trainer(config(*extra, "train.max_steps=3"), split, log=quiet, warn=quiet).fit()
    Trainer(config(*extra, "train.max_steps=5"), split, resume=True, log=quiet, warn=quiet).fit()
    a, b = losses(straight), losses(split)
    assert len(a) == len(b) == 5 and max(abs(x - y) for x, y in zip(a, b)) <= 1e-6


# -- numerical faults -----------------------------------------------------------------------
def nan_at(trainer: Trainer, bad_step: int, where: str) -> None:
    """Make step ``bad_step`` produce a NaN loss, or a NaN gradient of one encoder weight."""
    real_forward, calls = trainer.stepper.forward, [0]
    weight = trainer.model.encoder.blocks[0].mlp.fc1.weight

    def forward(images, masks):
        step, calls[0] = calls[0], calls[0] + 1
        loss, metrics = real_forward(images, masks)
        if step == bad_step and where == "loss":
            loss = loss * float("nan")
        if step == bad_step and where == "gradient":
            weight.register_hook(lambda g: None if calls[0] != bad_step + 1 else g * float("nan"))
        return loss, metrics

    trainer.stepper.forward = forward


@pytest.mark.parametrize("where, named", [("loss", "loss (nan)"),
                                          ("gradient", "gradient of encoder.blocks.0.mlp.fc1.weight")])
def test_non_finite_stops_with_step_and_last_checkpoint(tmp_path, where, named):
    trainer = Trainer(config("train.max_steps=8"), tmp_path, log=quiet, warn=quiet)
    nan_at(trainer, 3, where)
    with pytest.raises(NonFiniteError) as info:
        trainer.fit()
    message = str(info.value)
    assert f"non-finite {named}" in message and "at step 3" in message
    assert str(tmp_path / "checkpoints" / "step_00000002") in message
    assert "train.on_nan=skip_step" in message
    # The bad step changed nothing: the weights still equal the last finite step's.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_on_nan_skip_step_skips_and_continues(tmp_path):
    warnings = []
    trainer = Trainer(config("train.max_steps=5", "train.on_nan=skip_step"), tmp_path,
                      log=quiet, warn=warnings.append)
    nan_at(trainer, 3, "loss")
    before = {}
    real_step = trainer.train_step

    def remember(images, step):
        if step == 3:
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
            out = real_step(images, step)
            for k, v in trainer.model.state_dict().items():  # nothing moved, EMA included
                assert torch.equal(v, before[k]), k
            return out
        return real_step(images, step)

    trainer.train_step = remember
    trainer.fit()
    rows = metric_rows(tmp_path)
    assert [int(r["skipped_step"]) for r in rows] == [0, 0, 0, 1, 0]
    assert np.isnan(float(rows[3]["loss"])) and np.isfinite(float(rows[4]["loss"]))
    assert any("non-finite loss (nan) at step 3: step skipped" in w for w in warnings)


@pytest.mark.parametrize("on_nan", ["skip_step", "stop"])
def test_metrics_read_in_batches_change_nothing(tmp_path, on_nan):
    """The metrics stay on the device and are read every train.log_every steps, and a
    non-finite step is skipped there without being read (fused AdamW's found_inf, an EMA
    weight of 0): the same metrics, weights and skipped step as reading each step; with
    on_nan=stop the run stops at the next read, naming the step."""
    runs = {}
    for read_every in (1, 4):
        run_dir = tmp_path / f"every{read_every}"
        settings = ["train.max_steps=7", f"train.on_nan={on_nan}", f"train.log_every={read_every}"]
        trainer = Trainer(config(*settings),
                          run_dir, log=quiet, warn=quiet)
        nan_at(trainer, 2, "gradient")
        if on_nan == "stop":
            with pytest.raises(NonFiniteError, match="non-finite gradient of encoder.blocks.0.mlp.fc1.weight"
                                                     r" \(norm nan\) at step 2"):
                trainer.fit()
            # Read after step 3 (of 4 pending): the step after the bad one was taken.
            assert trainer.step == (3 if read_every == 1 else 4)
            continue
        trainer.fit()
        runs[read_every] = (metric_rows(run_dir), final_tensors(run_dir))
    if on_nan == "skip_step":
        (rows1, w1), (rows4, w4) = runs[1], runs[4]
        assert [r["skipped_step"] for r in rows1] == [r["skipped_step"] for r in rows4] == list("0010000")
        for a, b in zip(rows1, rows4):
            assert {k: v for k, v in a.items() if k not in ("img_per_s", "elapsed_s")} == \
                {k: v for k, v in b.items() if k not in ("img_per_s", "elapsed_s")}
        assert all(torch.equal(w1[k], w4[k]) for k in w1)


def test_batched_reads_after_resuming_between_two_log_steps(tmp_path):
    """Resumed at step 3 with metrics read every 4 steps and logged every 4: the log at step 4
    has its row read first, and every step gets its row once."""
    settings = ["train.checkpoint_every_steps=null", "train.log_every=4"]
    Trainer(config("train.max_steps=3", *settings), tmp_path, log=quiet, warn=quiet).fit()
    Trainer(config("train.max_steps=9", *settings), tmp_path, resume=True, log=quiet, warn=quiet).fit()
    assert [int(r["step"]) for r in metric_rows(tmp_path)] == list(range(9))


def test_skip_step_still_stops_a_run_that_only_produces_nan(tmp_path):
    trainer = Trainer(config("train.max_steps=20", "train.on_nan=skip_step"), tmp_path,
                      log=quiet, warn=quiet)
    real_forward = trainer.stepper.forward
    trainer.stepper.forward = lambda images, masks: (lambda out: (out[0] * float("nan"), out[1]))(
        real_forward(images, masks))
    with pytest.raises(NonFiniteError, match="at step 10 for 11 steps in a row"):
        trainer.fit()


def test_collapse_warning_names_the_step(tmp_path):
    warnings = []
    # Healthy tiny runs keep target_std near 0.5; a threshold above that must warn, once.
    Trainer(config("train.max_steps=4", "train.collapse_std=0.9"), tmp_path,
            log=quiet, warn=warnings.append).fit()
    collapse = [w for w in warnings if "representation collapse" in w]
    assert len(collapse) == 1 and "at step 0" in collapse[0] and "train.collapse_std=0.9" in collapse[0]
    warnings.clear()
    Trainer(config("train.max_steps=4"), tmp_path / "default", log=quiet, warn=warnings.append).fit()
    assert not [w for w in warnings if "collapse" in w]


# -- bad configuration and arguments --------------------------------------------------------
@pytest.mark.parametrize("overrides, env, message", [
    (["model.foo=1"], {}, "unknown config key 'model.foo'"),
    (["data.batch_size=abc"], {}, "data.batch_size: expected int, got 'abc'"),
    (["mask.min_keep=15"], {}, "mask settings leave the context below mask.min_keep=15"),
    (["optim.grad_accum=3"], {}, "data.batch_size=8 is not divisible by optim.grad_accum=3"),
    ([], {"RANK": "0", "WORLD_SIZE": "3"},
     "data.batch_size=8 is not divisible by world size 3 x optim.grad_accum 1"),
    (["model.img_size=30"], {}, "model.img_size=30 is not divisible by model.patch_size=8"),
    (["data.dataset=imagefolder:/does/not/exist"], {}, "image folder not found: /does/not/exist"),
    (["train.on_nan=ignore"], {}, "train.on_nan: got 'ignore'; allowed: stop, skip_step"),
    (["data.on_error=retry"], {}, "data.on_error: got 'retry'; allowed: skip, raise"),
])
def test_config_errors_exit_2_before_any_work(tmp_path, capsys, monkeypatch, overrides, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = tmp_path / "run"
    assert main(cli_args(run, *overrides)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not run.exists()  # nothing was written: the error came before any work


def test_starting_over_a_run_with_checkpoints_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(cli_args(run, "train.max_steps=2")) == 0
    before = sha256(run / "checkpoints" / "step_00000002" / "model.safetensors")
    capsys.readouterr()
    assert main(cli_args(run, "train.max_steps=2")) == 2  # forgot --resume
    assert "already holds checkpoints; continue that run with --resume" in error_line(capsys.readouterr().err)
    assert sha256(run / "checkpoints" / "step_00000002" / "model.safetensors") == before


def test_usage_errors_exit_2_from_the_console(tmp_path):
    args = ["pretrain", "--fallback", "--config", str(tiny_yaml(tmp_path))]
    out = subprocess.run([sys.executable, "-m", "imagejepa", *args], capture_output=True,
                         text=True, env=child_env())
    assert out.returncode == 2 and "--fallback only applies with --resume" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# -- safe loading ---------------------------------------------------------------------------
class Bomb:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_bomb_in_train_state_is_refused(tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "exploded"
    assert main(cli_args(run, "train.max_steps=2")) == 0
    folder = ckpt.find_checkpoint(run)
    state = folder / "train_state.pt"
    torch.save({"step": 2, "optimizer": Bomb(marker)}, state)
    # The attacker rewrites the manifest too, so only the safe loader stands in the way.
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["train_state.pt"] = {"size": state.stat().st_size, "sha256": sha256(state)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["pretrain", "--run-dir", str(run), "--resume", "--set", "train.max_steps=4"]) == 1
    err = capsys.readouterr().err.strip()
    assert "train_state.pt: refused to load" in err and "system" in err
    assert not marker.exists()
    # Proof that the file is a real bomb: full unpickling would have run it.
    torch.load(state, weights_only=False)
    assert marker.exists()


def test_every_torch_load_in_the_library_is_weights_only():
    calls = []
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        start = text.find("torch.load(")
        while start != -1:
            end = text.find(")", start)
            calls.append((path.name, text[start:end + 1]))
            start = text.find("torch.load(", end)
    assert calls, "expected at least the train_state loader"
    for name, call in calls:
        assert "weights_only=True" in call, f"{name}: {call}"


def test_checkpoints_written_in_the_background_hold_what_the_step_held(tmp_path, reference):
    """train.async_checkpoint: every checkpoint is the state of its step although training
    went on while it was written (the state is copied first): the same losses, the same final
    weights, the same checkpoints kept, and a resume from the one before the last ends equal."""
    run = tmp_path / "run"
    Trainer(config(f"train.max_steps={STEPS}", "train.async_checkpoint=true"), run,
            log=quiet, warn=quiet).fit()
    assert_same_run(run, reference)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["latest", "step_00000008", "step_00000010"]
    assert_checkpoints_sound(run)
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / "checkpoints" / "step_00000010")
    (again / "checkpoints" / "latest").write_text("step_00000008\n")
    continue_run(again)
    assert_same_run(again, reference)
