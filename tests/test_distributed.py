"""Several processes on the CPU (gloo), launched as users launch them, with the launch
scripts of ``scripts/``: torchrun on one node, two torchrun agents meeting through c10d, and
SLURM's ``srun`` starting one process per rank (a stand-in ``srun`` and ``scontrol`` here).
Each run is compared with one process training the same global batch, to 1e-5 in fp32.

The tiny model of ``helpers.TINY_OVERRIDES`` with a global batch of 16; each subprocess runs
on one thread (two of them share this machine's cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imagejepa import checkpoint as ckpt
from imagejepa.config import load_config
from imagejepa.train.preempt import PREEMPTED_EXIT
from imagejepa.train.trainer import Trainer

from .helpers import ROOT, TINY_OVERRIDES, catches, child_env, final_tensors, losses, metric_rows, quiet

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed")]

STEPS = 6
# No time budget (its fits follow the measured speed, which differs from run to run).
RUN = TINY_OVERRIDES + ["data.batch_size=16", "train.budget_minutes=null", "train.max_minutes=null",
                        "train.checkpoint_every_steps=null", f"train.max_steps={STEPS}"]
TOL = 1e-5
LAUNCH_TIMEOUT = 240


def config_file(folder: Path, *extra: str) -> Path:
    path = folder / "run.yaml"
    path.write_text(load_config(None, RUN + list(extra)).to_yaml())
    return path


def pretrain(run_dir: Path, *extra: str, config: Path | None = None) -> list[str]:
    """``imagejepa pretrain`` arguments (after ``-m imagejepa``) for the tiny run."""
    config = config or config_file(run_dir.parent)
    args = ["pretrain", "--config", str(config), "--run-dir", str(run_dir)]
    for item in extra:
        args += ["--set", item]
    return args


def script(name: str, run_dir: Path, **settings) -> tuple[list[str], dict[str, str]]:
    """``scripts/NAME`` on the tiny run: the command and its environment (``settings`` are the
    script's variables: GPUS, MAX_RESTARTS, ...)."""
    config = settings.pop("config", None) or config_file(run_dir.parent)
    env = child_env() | {"CONFIG": str(config), "RUN_DIR": str(run_dir)}
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return ["bash", str(ROOT / "scripts" / name)], env


STARTED: list[subprocess.Popen] = []  # each in its own session: killed whole if a test fails


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """A failed or timed-out test must not leave launchers and workers behind (they would
    slow every later test and run)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def start(name: str, run_dir: Path, *extra: str, **settings) -> subprocess.Popen:
    command, env = script(name, run_dir, **settings)
    for item in extra:
        command += ["--set", item]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    STARTED.append(proc)
    return proc


def run_script(name: str, run_dir: Path, *extra: str, **settings) -> tuple[int, str, str]:
    proc = start(name, run_dir, *extra, **settings)
    out, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    return proc.returncode, out, err


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=child_env(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT, **kwargs)


def one_process(run_dir: Path, *extra: str) -> Path:
    """The reference: one process, in this one, training the whole global batch."""
    Trainer(load_config(None, RUN + list(extra)), run_dir, log=quiet, warn=quiet).fit()
    return run_dir


def assert_same_training(run_dir: Path, reference: Path, weights_tol: float = TOL) -> None:
    """Same loss at every step and the same final weights (every network), to 1e-5."""
    got, want = losses(run_dir), losses(reference)
    assert [int(r["step"]) for r in metric_rows(run_dir)] == list(range(len(want)))
    assert got == pytest.approx(want, abs=TOL, rel=TOL)
    a, b = final_tensors(run_dir), final_tensors(reference)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < weights_tol, worst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return one_process(tmp_path_factory.mktemp("one") / "run")


def test_two_processes_train_like_one_process_with_the_global_batch(tmp_path, reference):
    """2 processes x 8 = 1 process x 16 = 1 process x 8 x grad_accum 2; rank 0 alone writes.
    (scripts/train_single_node.sh with GPUS=2: torchrun --standalone.)"""
    run_dir = tmp_path / "two"
    code, out, err = run_script("train_single_node.sh", run_dir, gpus=2, max_restarts=0)
    assert code == 0, err[-3000:]
    assert_same_training(run_dir, reference)
    assert_same_training(one_process(tmp_path / "accum", "optim.grad_accum=2"), reference)
    # One start-up line (rank 0's), saying how the global batch is split; one checkpoint.
    lines = [line for line in out.splitlines() if line.startswith("imagejepa: vit_tiny")]
    assert len(lines) == 1 and "2 processes on cpu (DDP)" in lines[0], out
    assert "global batch 16 = 8 per process x 2" in lines[0]
    assert [p.name for p in (run_dir / "checkpoints").glob("step_*")] == [f"step_{STEPS:08d}"]
    assert not list(tmp_path.glob("two*/**/.tmp-*"))


def test_a_run_started_on_two_processes_resumes_on_one(tmp_path, reference):
    """The checkpoint does not depend on the number of processes; on one process the same
    global batch is reached with optim.grad_accum=2, and the run ends as if never stopped."""
    run_dir = tmp_path / "run"
    config = config_file(tmp_path)
    code, _, err = run_script("train_single_node.sh", run_dir, "train.max_steps=3", config=config, gpus=2)
    assert code == 0, err[-3000:]
    assert ckpt.find_checkpoint(run_dir).name == "step_00000003"
    second = run([sys.executable, "-m", "imagejepa", *pretrain(run_dir, "optim.grad_accum=2", config=config),
                  "--resume"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    assert_same_training(run_dir, reference)


def test_two_torchrun_agents_meet_through_c10d_and_match_one_process(tmp_path, reference):
    """Two nodes as two agents on localhost: --nnodes 2, one process each, c10d rendezvous
    (scripts/train_two_nodes.sh run twice, as on two machines)."""
    run_dir, port = tmp_path / "run", free_port()
    config = config_file(tmp_path)
    agents = [start("train_two_nodes.sh", run_dir, config=config, master="127.0.0.1", port=port,
                    nodes=2, gpus=1, job_id="two-nodes") for _ in range(2)]
    outputs = [agent.communicate(timeout=LAUNCH_TIMEOUT) for agent in agents]
    for agent, (_, err) in zip(agents, outputs):
        assert agent.returncode == 0, err[-3000:]
    assert sum("2 processes on cpu" in out for out, _ in outputs) == 1  # rank 0's agent only
    assert_same_training(run_dir, reference)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:  # the process ended meanwhile
            continue
        if re.search(rf"^PPid:\s+{pid}$", text, re.M):
            found.append(int(status.parent.name))
    return sorted(found)


def wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"gave up waiting for {what}: exit {proc.returncode}\n{err[-3000:]}")
        time.sleep(0.005)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_killed(tmp_path):
    """torchrun --max-restarts 1 with pretrain --resume auto (scripts/train_single_node.sh):
    SIGKILL one worker after the first checkpoint; the agent restarts the group, which
    continues from the last checkpoint."""
    steps = 40
    extra = [f"train.max_steps={steps}", "train.checkpoint_every_steps=5"]
    reference = one_process(tmp_path / "one" / "run", *extra)
    run_dir = tmp_path / "run"
    agent = start("train_single_node.sh", run_dir, *extra, gpus=2, max_restarts=1)
    wait_for(lambda: (run_dir / "checkpoints" / "latest").exists(), "the first checkpoint", agent)
    workers = children(agent.pid)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    out, err = agent.communicate(timeout=LAUNCH_TIMEOUT)
    assert agent.returncode == 0, err[-3000:]
    resumed = re.findall(r"resumed from \S+step_(\d+) at step (\d+)", out)
    assert resumed and int(resumed[0][1]) < steps, out  # the restarted group continued the run
    assert "imagejepa pretrain: error: rank 0: lost contact with the other processes" in err  # one line
    assert_same_training(run_dir, reference)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_sigterm_to_the_group_stops_every_rank_after_the_same_step(tmp_path):
    """As a cluster pre-empts a job: SIGTERM to torchrun and its workers at once. The ranks
    agree, stop after the same step, and rank 0 writes one checkpoint of that step."""
    run_dir = tmp_path / "run"
    agent = start("train_single_node.sh", run_dir, "train.max_steps=100000", "optim.epochs=1000", gpus=2)
    wait_for(lambda: len(metric_rows(run_dir)) >= 3, "three steps", agent)
    os.killpg(agent.pid, signal.SIGTERM)
    _, err = agent.communicate(timeout=LAUNCH_TIMEOUT)
    stopped = re.findall(r"imagejepa pretrain: SIGTERM received: stopped after step (\d+)", err)
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-3000:]
    step = int(stopped[0])
    assert [p.name for p in (run_dir / "checkpoints").glob("step_*")] == [f"step_{step:08d}"]
    assert [int(r["step"]) for r in metric_rows(run_dir)] == list(range(step))


def srun_like(rank: int, world: int, port: int, args: list[str], program=("-m", "imagejepa"),
              **env_extra: str) -> subprocess.Popen:
    """One rank started as ``srun`` starts it: no torchrun, the rendezvous in the environment."""
    env = child_env() | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)} | env_extra
    proc = subprocess.Popen([sys.executable, *program, *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    return proc


# `imagejepa` with a failure injected on one rank (IMAGEJEPA_TEST_FAIL): its step raises, or
# its save finds the disk full.
FAILING_RANK = """
import os, sys
from imagejepa.train import trainer
where, rank = os.environ["IMAGEJEPA_TEST_FAIL"], os.environ["RANK"]
if where == "step" and rank == "1":
    real_step = trainer.Trainer.train_step
    def train_step(self, images, step):
        if step == 2:
            raise RuntimeError("injected: the step failed")
        return real_step(self, images, step)
    trainer.Trainer.train_step = train_step
if where == "save" and rank == "0":
    def save_training_state(*args, **kwargs):
        raise OSError(28, "No space left on device")
    trainer.save_training_state = save_training_state
sys.argv[0] = "imagejepa"
from imagejepa.cli import run
run()
"""


@pytest.mark.parametrize("failure", ["step", "save", "bad_images"])
def test_a_failing_rank_stops_every_rank_within_seconds(tmp_path, failure):
    """Started as srun starts them (nothing kills the others when one rank exits): an exception
    in rank 1's step, a full disk under rank 0's save, or more unreadable images than the cap
    (counted over both ranks) end both ranks with exit 1 and a last line naming the failure,
    within seconds of each other, never at a collective's timeout."""
    from .test_faults import broken_image_folder

    extra = ["train.max_steps=6"]
    if failure == "bad_images":  # 4 of 16 files broken: over a cap of 2 only counted together
        images = broken_image_folder(tmp_path / "images")
        extra += [f"data.dataset=imagefolder:{images}", "data.max_bad_fraction=0.15", "optim.epochs=4"]
    args = pretrain(tmp_path / "run", *extra, config=config_file(tmp_path))
    port = free_port()
    ranks = [srun_like(rank, 2, port, args, program=("-c", FAILING_RANK), IMAGEJEPA_TEST_FAIL=failure)
             for rank in range(2)]
    ended: dict[int, float] = {}
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while len(ended) < 2 and time.monotonic() < deadline:
        for rank, proc in enumerate(ranks):
            if rank not in ended and proc.poll() is not None:
                ended[rank] = time.monotonic()
        time.sleep(0.05)
    errors = [proc.communicate(timeout=10)[1] for proc in ranks]
    assert [proc.returncode for proc in ranks] == [1, 1], errors
    assert abs(ended[0] - ended[1]) < 30
    last = [err.strip().splitlines()[-1] for err in errors]
    if failure == "step":
        assert last[1] == "RuntimeError: injected: the step failed", errors[1][-2000:]
        assert last[0].startswith("imagejepa pretrain: error: rank 1 failed (RuntimeError: injected: "
                                  "the step failed); rank 0 stopped with it"), errors[0][-2000:]
    elif failure == "save":
        assert last[0] == "OSError: [Errno 28] No space left on device", errors[0][-2000:]
        assert last[1].startswith("imagejepa pretrain: error: rank 0 failed (OSError: [Errno 28] No space "
                                  "left on device); rank 1 stopped with it"), errors[1][-2000:]
    else:
        for line in last:
            assert re.match(r"imagejepa pretrain: error: \d+ of the 16 image files are unreadable, more than "
                            r"data.max_bad_fraction=0.15", line), line


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status (Linux)")
@pytest.mark.parametrize("resume", [False, True])
def test_sigterm_during_start_up_exits_75_on_every_rank(tmp_path, resume):
    """SLURM requeues on 75: a stop signal while the ranks load PyTorch, build the run and
    meet must end every rank with 75, with nothing trained or saved."""
    run_dir = tmp_path / "run"
    config = config_file(tmp_path)
    if resume:
        one_process(run_dir, "train.max_steps=2")
    args = pretrain(run_dir, "train.max_steps=4", config=config) + (["--resume"] if resume else [])
    port = free_port()
    ranks = [srun_like(rank, 2, port, args) for rank in range(2)]
    for proc in ranks:
        wait_for(lambda p=proc: catches(p.pid, signal.SIGTERM), "the stop-signal handler", proc)
    for proc in ranks:
        proc.send_signal(signal.SIGTERM)
    errors = [proc.communicate(timeout=LAUNCH_TIMEOUT)[1] for proc in ranks]
    assert [proc.returncode for proc in ranks] == [PREEMPTED_EXIT] * 2, errors
    for err in errors:
        assert "SIGTERM received: stopped before" in err.strip().splitlines()[-1], err[-2000:]
    assert len(metric_rows(run_dir)) == (2 if resume else 0)
    names = [p.name for p in (run_dir / "checkpoints").glob("step_*")]
    assert names == (["step_00000002"] if resume else [])


FAKE_SRUN = """#!{python}
# srun as far as scripts/slurm_vith14.sbatch needs it: SLURM_NTASKS tasks on this machine,
# each with its SLURM_PROCID and SLURM_LOCALID; exits with the highest exit code of the tasks.
import os, subprocess, sys
command = [a for a in sys.argv[1:] if not a.startswith("--kill-on-bad-exit")]
tasks = [subprocess.Popen(command, env=os.environ | {{"SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}})
         for i in range(int(os.environ["SLURM_NTASKS"]))]
with open(os.environ["FAKE_SRUN_PIDS"], "w") as f:
    f.write(" ".join(str(t.pid) for t in tasks))
sys.exit(max(t.wait() for t in tasks))
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
# scontrol: `show hostnames` gives this machine; `requeue JOB` is recorded.
case "$1" in
    show) echo 127.0.0.1 ;;
    requeue) echo "$2" >> "$FAKE_SCONTROL_REQUEUED" ;;
esac
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_slurm_script_requeues_on_usr1_and_the_requeued_job_ends_as_if_never_stopped(tmp_path):
    """scripts/slurm_vith14.sbatch under a stand-in srun: SIGUSR1 (--signal=USR1@120) to every
    task mid-run; the ranks stop after the same step, exit 75, the script requeues the job;
    run again (the requeued job), the run continues and ends equal to one uninterrupted."""
    steps = 40
    extra = [f"train.max_steps={steps}"]
    reference = one_process(tmp_path / "one" / "run", *extra)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    run_dir, requeued, pids = tmp_path / "run", tmp_path / "requeued", tmp_path / "pids"
    slurm = {"path": f"{bin_dir}{os.pathsep}{child_env()['PATH']}", "slurm_job_id": 4242,
             "slurm_job_nodelist": "node1", "slurm_ntasks": 2, "fake_srun_pids": pids,
             "fake_scontrol_requeued": requeued}
    config = config_file(tmp_path, *extra)
    job = start("slurm_vith14.sbatch", run_dir, config=config, **slurm)
    wait_for(lambda: len(metric_rows(run_dir)) >= 3, "three steps", job)
    for pid in map(int, pids.read_text().split()):
        os.kill(pid, signal.SIGUSR1)
    out, err = job.communicate(timeout=LAUNCH_TIMEOUT)
    assert job.returncode == PREEMPTED_EXIT, err[-3000:]
    assert requeued.read_text().split() == ["4242"], out
    stopped = re.findall(r"SIGUSR1 received: stopped after step (\d+)", err)
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-3000:]
    assert int(stopped[0]) < steps
    code, out, err = run_script("slurm_vith14.sbatch", run_dir, config=config, **slurm)  # requeued
    assert code == 0, err[-3000:]
    assert requeued.read_text().split() == ["4242"]  # not requeued again: the run is complete
    assert f"resumed from {run_dir}/checkpoints/step_{int(stopped[0]):08d}" in out
    assert_same_training(run_dir, reference)


OFFICIAL_TINY = """\
meta: {model_name: vit_tiny, pred_depth: 1, pred_emb_dim: 48, use_bfloat16: false}
data: {batch_size: 8, crop_size: 32, crop_scale: [0.3, 1.0], num_workers: 0}
mask: {patch_size: 8, aspect_ratio: [0.75, 1.5], enc_mask_scale: [0.85, 1.0], pred_mask_scale: [0.15, 0.2],
       num_pred_masks: 4, min_keep: 2, num_enc_masks: 1, allow_overlap: false}
optimization: {ema: [0.996, 1.0], epochs: 2, final_lr: 1.0e-6, final_weight_decay: 0.4, ipe_scale: 1.0,
               lr: 0.001, start_lr: 0.0002, warmup: 0.1, weight_decay: 0.04}
"""


def test_an_official_file_on_two_processes_with_a_time_budget(tmp_path):
    """An official file's batch_size is per process (8 x 2 = 16, said at start-up), and a
    time budget, fitted to rank 0's clock, ends every rank at the same step."""
    official = tmp_path / "official.yaml"
    official.write_text(OFFICIAL_TINY)
    run_dir = tmp_path / "run"
    code, out, err = run_script("train_single_node.sh", run_dir, "data.dataset=synthetic", "model.depth=1",
                                "train.budget_minutes=0.1", "train.checkpoint_every_steps=null",
                                config=official, gpus=2, max_restarts=0)
    assert code == 0, err[-3000:]
    assert ("global batch 16 = 8 per process x 2 (the official file's batch_size 8 is per process: "
            "x 2 processes = 16)") in out
    fits = ckpt.load_meta(ckpt.find_checkpoint(run_dir))["schedule_fits"]
    assert fits and len(fits) >= 2, out  # the budget fitted the schedule's length
    end = fits[-1][1]
    assert [int(r["step"]) for r in metric_rows(run_dir)] == list(range(end))
    assert ckpt.find_checkpoint(run_dir).name == f"step_{end:08d}"


def _rank_with_a_nan(rank: int, world: int, port: int, run_dir: Path, on_nan: str, out: Path) -> None:
    """One rank of :func:`test_a_non_finite_loss_on_one_rank_is_skipped_or_stops_on_every_rank`:
    rank 1's loss of step 2 is NaN; rank 0's is not."""
    from imagejepa.distributed import processes_from_env, start_processes, stop_processes
    from imagejepa.errors import NonFiniteError

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    processes = start_processes(processes_from_env(), torch.device("cpu"))
    try:
        cfg = load_config(None, RUN + [f"train.on_nan={on_nan}", "train.max_steps=5"])
        trainer = Trainer(cfg, run_dir, log=quiet, warn=quiet, processes=processes)
        if rank == 1:
            real_forward, calls = trainer.stepper.forward, [0]

            def forward(images, masks):
                loss, metrics = real_forward(images, masks)
                calls[0] += 1
                return (loss * float("nan") if calls[0] == 3 else loss), metrics

            trainer.stepper.forward = forward
        try:
            trainer.fit()
            outcome = "finished"
        except NonFiniteError as e:
            outcome = str(e)
        torch.save(trainer.model.state_dict(), out / f"rank{rank}.pt")
        (out / f"rank{rank}.txt").write_text(outcome)
    finally:
        stop_processes(processes)


@pytest.mark.parametrize("on_nan", ["skip_step", "stop"])
def test_a_non_finite_loss_on_one_rank_is_skipped_or_stops_on_every_rank(tmp_path, on_nan):
    """Ranks agree on a non-finite step: both skip it (and stay identical), or both stop."""
    run_dir = tmp_path / "run"
    torch.multiprocessing.spawn(_rank_with_a_nan, args=(2, free_port(), run_dir, on_nan, tmp_path), nprocs=2)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # still in step
    if on_nan == "skip_step":
        assert outcomes == ["finished", "finished"]
        assert [int(r["skipped_step"]) for r in metric_rows(run_dir)] == [0, 0, 1, 0, 0]
    else:
        for outcome in outcomes:
            assert outcome.startswith("non-finite loss (nan) at step 2; the run stopped"), outcome


def test_hsdp_on_2_x_2_processes_trains_like_one_process(tmp_path, reference):
    """dist.strategy=hsdp on 4 processes: 2 replicas of 2 shards (a 2-D mesh), the same losses
    and weights as one process training the global batch; a shard size that does not divide
    the processes is refused before anything is built."""
    run_dir = tmp_path / "run"
    config = config_file(tmp_path, "dist.strategy=hsdp", "dist.shard_size=2")
    code, out, err = run_script("train_single_node.sh", run_dir, config=config, gpus=4, max_restarts=0)
    assert code == 0, err[-3000:]
    assert "4 processes on cpu (HSDP: 2 replicas x 2 shards)" in out
    assert_same_training(run_dir, reference)
    code, out, err = run_script("train_single_node.sh", tmp_path / "bad", "dist.shard_size=3",
                                config=config, gpus=4, max_restarts=0)
    assert code != 0 and "dist.shard_size=3 does not divide the 4 processes into shard groups" in err


def test_fsdp_trains_like_one_process_resumes_exactly_and_its_checkpoint_evaluates(tmp_path, reference):
    """dist.strategy=fsdp (FSDP2, sharded per block, EMA on the shards) on 2 processes: the
    same losses and weights as one process (and so as DDP). Its checkpoints are sharded (each
    rank wrote its own shards, the manifest lists them); stopped at step 3 and resumed on 2
    processes, with grad_accum 2 and activation checkpointing from there on, it ends equal,
    and so does the same checkpoint resumed on one process; eval reads the sharded
    checkpoint, and convert writes it in the single-folder format."""
    run_dir, config = tmp_path / "run", config_file(tmp_path, "dist.strategy=fsdp")
    later = ["optim.grad_accum=2", "train.activation_checkpointing=true"]
    for steps, extra in ((3, []), (STEPS, later)):  # a first part, then --resume auto continues it
        code, out, err = run_script("train_single_node.sh", run_dir, f"train.max_steps={steps}", *extra,
                                    config=config, gpus=2, max_restarts=0)
        assert code == 0, err[-3000:]
        if steps == 3:
            first = run_dir / "checkpoints" / "step_00000003"
            assert sorted(p.name for p in (first / "shards").iterdir()) == [".metadata", "__0_0.distcp",
                                                                            "__1_0.distcp"]
            listed = json.loads((first / "manifest.json").read_text())["files"]
            assert {"shards/.metadata", "shards/__0_0.distcp", "shards/__1_0.distcp"} <= listed.keys()
            assert not (first / "model.safetensors").exists()
            one = tmp_path / "one"
            shutil.copytree(run_dir, one)
    # The sharded checkpoint of step 3 resumed on one process (resharded: whole).
    Trainer(load_config(None, RUN + ["dist.strategy=fsdp"]), one, resume=True, log=quiet, warn=quiet).fit()
    assert_same_training(one, reference)
    assert "2 processes on cpu (FSDP2)" in out and "resumed from" in out and "step_00000003" in out
    assert_same_training(run_dir, reference)
    from imagejepa.cli import main

    assert main(["eval", "knn", "--checkpoint", str(run_dir), "--data", "synthetic",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert main(["convert", str(run_dir), str(tmp_path / "whole")]) == 0
    whole = ckpt.load_tensors(tmp_path / "whole")
    sharded = final_tensors(run_dir)
    assert whole.keys() <= sharded.keys() and all(torch.equal(whole[k], sharded[k]) for k in whole)
    assert {k.split(".")[0] for k in whole} == {"encoder", "target_encoder", "predictor"}


def test_fsdp_checkpoints_written_in_the_background_resume_exactly(tmp_path, reference):
    """train.async_checkpoint under FSDP2: each rank's shards are copied to the CPU and written
    by a thread (its collectives in a group of their own) while training goes on; the run
    trains like one process, every kept checkpoint is complete, and the one of step 4 resumed
    on one process ends equal."""
    run_dir = tmp_path / "run"
    config = config_file(tmp_path, "dist.strategy=fsdp", "train.async_checkpoint=true",
                         "train.checkpoint_every_steps=2", "train.keep_last=3")
    code, out, err = run_script("train_single_node.sh", run_dir, config=config, gpus=2, max_restarts=0)
    assert code == 0, err[-3000:]
    assert_same_training(run_dir, reference)
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["latest", "step_00000002", "step_00000004", "step_00000006"]
    for name in kept[1:]:
        ckpt.verify_checkpoint(run_dir / "checkpoints" / name)
    (run_dir / "checkpoints" / "latest").write_text("step_00000004\n")
    shutil.rmtree(run_dir / "checkpoints" / "step_00000006")
    Trainer(load_config(None, RUN), run_dir, resume=True, log=quiet, warn=quiet).fit()
    assert_same_training(run_dir, reference)


# 8x8 patches instead of 4x4: five context lengths and two target lengths in the six steps.
WIDER_GRID = ["model.patch_size=4"]


@pytest.fixture(scope="module")
def wider_reference(tmp_path_factory) -> Path:
    return one_process(tmp_path_factory.mktemp("one-wider") / "run", *WIDER_GRID)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_compiled_training_on_two_processes_equals_eager(tmp_path, wider_reference, strategy):
    """train.compile under DDP and FSDP2 on 2 processes: the losses and final weights of the
    eager one-process run, to 1e-4 (the compiler's kernels sum in other orders), over steps
    whose context lengths differ, with a bounded number of graphs (dynamic shapes: not one
    per length)."""
    run_dir = tmp_path / "run"
    config = config_file(tmp_path, f"dist.strategy={strategy}", "train.compile=true", *WIDER_GRID)
    env = {"torchinductor_cache_dir": tmp_path.parent / "inductor-cache"}  # shared by the two tests
    code, out, err = run_script("train_single_node.sh", run_dir, config=config, gpus=2, max_restarts=0, **env)
    assert code == 0, err[-3000:]
    lengths = {int(row["context_patches"]) for row in metric_rows(run_dir)}
    graphs = [int(n) for n in re.findall(r"torch.compile made (\d+) graph", out + err)]
    # Measured: 2 graphs under DDP, 13 under FSDP2 (its hooks split the step into a frame per
    # block and network); a graph per context length would make several times as many.
    bound = {"ddp": 3, "fsdp": 16}[strategy]
    assert len(lengths) >= 5 and graphs and max(graphs) <= bound, (lengths, graphs)
    got, want = losses(run_dir), losses(wider_reference)
    assert got == pytest.approx(want, abs=1e-4, rel=1e-4)
    a, b = final_tensors(run_dir), final_tensors(wider_reference)
    assert max(float((a[k] - b[k]).abs().max()) for k in b) < 1e-4


def test_tar_shards_train_on_two_processes_and_resume_exactly(tmp_path):
    """An image folder packed into shards (`imagejepa shard`), trained from on 2 processes,
    stopped and resumed: equal to one uninterrupted process reading the same shards."""
    from imagejepa.cli import main

    from .test_data import make_image_folder

    make_image_folder(tmp_path / "images", per_class=32, size=(40, 36))
    assert main(["shard", "--data", f"imagefolder:{tmp_path / 'images'}", "--out", str(tmp_path / "shards"),
                 "--per-shard", "20"]) == 0
    extra = [f"data.dataset=webdataset:{tmp_path / 'shards' / 'shard-*.tar'}"]
    reference = one_process(tmp_path / "one" / "run", *extra)  # 64 images: an epoch is 4 steps
    run_dir, config = tmp_path / "run", config_file(tmp_path, *extra)
    for steps in (3, STEPS):
        code, out, err = run_script("train_single_node.sh", run_dir, f"train.max_steps={steps}",
                                    config=config, gpus=2, max_restarts=0)
        assert code == 0, err[-3000:]
    assert "on webdataset:" in out and "(64 images)" in out and "resumed from" in out
    assert_same_training(run_dir, reference)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_term_against_collapse_on_two_processes_equals_one_and_resumes_exactly(tmp_path, strategy):
    """optim.anti_collapse=vc takes its statistics over the whole global batch (the ranks add
    their moments with an autograd all-reduce): 2 processes x 8 images, stopped at step 3 and
    resumed, train as 1 process x 16, losses, terms and weights, under DDP and FSDP2."""
    extra = ["optim.anti_collapse=vc", "optim.anti_collapse_weight=1.0"]
    reference = one_process(tmp_path / "one" / "run", *extra)
    run_dir, config = tmp_path / "run", config_file(tmp_path, *extra, f"dist.strategy={strategy}")
    for steps in (3, STEPS):
        code, out, err = run_script("train_single_node.sh", run_dir, f"train.max_steps={steps}",
                                    config=config, gpus=2, max_restarts=0)
        assert code == 0, err[-3000:]
    assert "resumed from" in out
    assert_same_training(run_dir, reference)
    terms = [float(r["anti_collapse"]) for r in metric_rows(run_dir)]
    want = [float(r["anti_collapse"]) for r in metric_rows(reference)]
    assert terms == pytest.approx(want, abs=TOL, rel=TOL) and all(t > 0 for t in terms)


@pytest.mark.slow
@pytest.mark.parametrize("method, strategy", [("mae", "fsdp"), ("ijepa_pixels", "ddp"), ("dino", "fsdp")])
def test_each_baseline_on_two_processes_equals_one(tmp_path, method, strategy):
    """MAE, the pixel-target ablation and DINO (its centre and head-input statistics summed
    over ranks, its heads sharded by FSDP2 like the rest) train on 2 processes x 8 images as
    on 1 x 16."""
    from .test_methods import METHOD_SETTINGS

    extra = [*METHOD_SETTINGS, f"method.name={method}", "train.max_steps=4"]
    reference = one_process(tmp_path / "one" / "run", *extra)
    run_dir, config = tmp_path / "run", config_file(tmp_path, *extra, f"dist.strategy={strategy}")
    code, out, err = run_script("train_single_node.sh", run_dir, config=config, gpus=2, max_restarts=0)
    assert code == 0, err[-3000:]
    assert f"imagejepa: {method} vit_tiny" in out
    # DINO's losses agree to 1e-7; its weights to 1.2e-5 after 4 steps (6.6e-5 under the AVX2
    # cap, whose kernels round differently), the same under DDP and FSDP2: the ranks' sums
    # (centre, head-input moments) are added in another order, and a teacher temperature of
    # 0.03 and AdamW's normalisation amplify that rounding.
    assert_same_training(run_dir, reference, weights_tol=2e-4 if method == "dino" else TOL)
