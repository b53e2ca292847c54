import csv
import json

import pytest
import torch

from imagejepa.checkpoint import latest_checkpoint, load_tensors
from imagejepa.config import load_config
from imagejepa.train.trainer import Trainer

from .helpers import TINY_OVERRIDES

# The first two losses of the tiny run, stored when each parameter came to be drawn from
# its own seeded generator (Method.initialise; before: [0.463546306, 0.459422261]). A change
# here means the initialisation, data order, crops, masks or the loss changed.
STORED_LOSSES = [0.460818022, 0.456299424]


def tiny_config(*extra):
    return load_config(None, TINY_OVERRIDES + list(extra))


def losses(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def quiet(*_):
    pass


def test_two_steps_match_stored_losses(tmp_path):
    Trainer(tiny_config("train.max_steps=2"), tmp_path, log=quiet).fit()
    assert losses(tmp_path) == pytest.approx(STORED_LOSSES, rel=1e-4)


def test_run_dir_layout(tmp_path):
    Trainer(tiny_config("train.max_steps=3"), tmp_path, log=quiet).fit()
    assert (tmp_path / "config.yaml").is_file()
    assert len(losses(tmp_path)) == 3
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_00000003"
    for name in ("model.safetensors", "train_state.pt", "meta.json"):
        assert (latest / name).is_file()
    keys = load_tensors(latest).keys()
    assert {k.split(".")[0] for k in keys} == {"encoder", "target_encoder", "predictor"}


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    Trainer(tiny_config("train.max_steps=6"), straight, log=quiet).fit()
    Trainer(tiny_config("train.max_steps=3"), split, log=quiet).fit()
    resumed = Trainer(tiny_config("train.max_steps=6"), split, resume=True, log=quiet)
    assert resumed.step == 3
    resumed.fit()
    a, b = losses(straight), losses(split)
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6
    wa, wb = load_tensors(latest_checkpoint(straight)), load_tensors(latest_checkpoint(split))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one = Trainer(tiny_config(), tmp_path / "a", log=quiet)
    acc = Trainer(tiny_config("optim.grad_accum=2"), tmp_path / "b", log=quiet)
    images, *_ = next(iter(one.loader))
    (m1,) = one.stepper.read([one.train_step(images, 0)])
    (m2,) = acc.stepper.read([acc.train_step(images, 0)])
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5)
    for p, q in zip(one.model.encoder.parameters(), acc.model.encoder.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_loss_decreases_on_synthetic_data(tmp_path):
    Trainer(tiny_config("train.max_steps=30"), tmp_path, log=quiet).fit()
    values = losses(tmp_path)
    assert sum(values[-5:]) / 5 < 0.8 * sum(values[:5]) / 5


def test_time_limit_stops_and_checkpoints(tmp_path):
    cfg = tiny_config("train.max_minutes=0.0001")
    trainer = Trainer(cfg, tmp_path, log=quiet)
    trainer.fit()
    assert 1 <= trainer.step < trainer.total_steps
    assert latest_checkpoint(tmp_path).name == f"step_{trainer.step:08d}"


def test_resume_without_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Trainer(tiny_config(), tmp_path, resume=True, log=quiet)


def test_activation_checkpointing_trains_the_same(tmp_path):
    """train.activation_checkpointing recomputes each block in the backward pass: the same
    losses and weights (fp32), and the blocks' activations are really not kept."""
    plain = Trainer(tiny_config("train.max_steps=3", "model.depth=2"), tmp_path / "plain", log=quiet)
    plain.fit()
    cfg = tiny_config("train.max_steps=3", "model.depth=2", "train.activation_checkpointing=true")
    recomputed = Trainer(cfg, tmp_path / "recomputed", log=quiet)
    assert recomputed.model.encoder.checkpoint_blocks and recomputed.model.predictor.checkpoint_blocks
    recomputed.fit()
    assert losses(tmp_path / "recomputed") == pytest.approx(losses(tmp_path / "plain"), abs=1e-6)
    a, b = plain.model.state_dict(), recomputed.model.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    # Saved for the backward pass: fewer tensors with recomputation (only the blocks' inputs).
    images = torch.randn(8, 3, 32, 32)
    masks = plain.sample_masks(0, 8)

    def saved_tensors(trainer):
        count = [0]
        with torch.autograd.graph.saved_tensors_hooks(lambda t: count.__setitem__(0, count[0] + 1) or t,
                                                      lambda t: t):
            trainer.stepper.forward(images, masks)
        return count[0]

    assert saved_tensors(recomputed) < saved_tensors(plain) / 2


def test_a_flop_budget_fits_the_same_schedule_on_a_busy_machine_and_resumes_exactly(tmp_path):
    """train.budget_flops: the length is the budget over the FLOPs of a step, counted on the
    model (not timed), so two busy processes beside it change nothing; 6 steps and a resume
    to the schedule's end equal the run straight through."""
    import subprocess
    import sys

    fast = ("monitor.knn_every=0", "train.checkpoint_every_steps=null")
    probe = Trainer(tiny_config("train.budget_flops=1e15", *fast), tmp_path / "probe", log=quiet)
    budget = 10.5 * probe.step_flops
    assert probe.step_flops > 1e6
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        busy = Trainer(tiny_config(f"train.budget_flops={budget}", *fast), tmp_path / "busy", log=quiet)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    straight = Trainer(tiny_config(f"train.budget_flops={budget}", *fast), tmp_path / "straight", log=quiet)
    assert busy.total_steps == straight.total_steps == 10
    assert busy.schedules == straight.schedules and busy.step_flops == straight.step_flops
    straight.fit()
    Trainer(tiny_config(f"train.budget_flops={budget}", "train.max_steps=6", *fast), tmp_path / "split",
            log=quiet).fit()
    resumed = Trainer(tiny_config(f"train.budget_flops={budget}", *fast), tmp_path / "split", resume=True,
                      log=quiet)
    resumed.fit()
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert len(a) == len(b) == 10
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6
    meta = json.loads((latest_checkpoint(tmp_path / "split") / "meta.json").read_text())
    assert meta["train_flops"] == pytest.approx(10 * probe.step_flops)


@pytest.mark.parametrize("method", ["ijepa", "mae", "dino", "ijepa_pixels"])
def test_meta_device_initialisation_equals_eager_initialisation(method):
    """Built with its parameters on the meta device, then placed (made real and drawn), a
    model equals the same model built whole and drawn; buffers are kept; each EMA follower
    starts equal to the network it follows; another seed draws other values."""
    from imagejepa.distributed import SINGLE
    from imagejepa.methods import build_method
    from imagejepa.train.build import build_model, place_model

    cfg = tiny_config(f"method.name={method}")
    placed = build_model(cfg)
    assert all(p.device.type == "meta" for p in placed.parameters())
    place_model(placed, cfg, SINGLE, torch.device("cpu"), "fp32")
    eager = build_method(cfg)
    eager.initialise(cfg.train.seed)
    a, b = placed.state_dict(), eager.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(placed.buffers(), eager.buffers(), strict=True))
    for follower, followed in placed.ema_pairs:
        assert all(torch.equal(x, y) for x, y in zip(getattr(placed, follower).parameters(),
                                                     getattr(placed, followed).parameters()))
    other = build_method(cfg)
    other.initialise(cfg.train.seed + 1)
    weight = "encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(other.state_dict()[weight], a[weight])
    assert a[weight].std().item() == pytest.approx(0.02, rel=0.1)  # trunc-normal(0.02)
