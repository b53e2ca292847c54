import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from imagejepa.cli import main

from .helpers import TINY_OVERRIDES

DEMO_CONFIG = Path(__file__).parents[1] / "configs" / "fmnist_vit_tiny.yaml"


def pretrain_args(run_dir, *extra):
    args = ["pretrain", "--config", str(DEMO_CONFIG), "--run-dir", str(run_dir)]
    for item in TINY_OVERRIDES + list(extra):
        args += ["--set", item]
    return args


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_pretrain_then_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(pretrain_args(run, "train.max_steps=4")) == 0
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert main(["pretrain", "--run-dir", str(run), "--resume", "--set", "train.max_steps=6"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    steps = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["0", "1", "2", "3", "4", "5"]


def test_resume_auto_starts_then_continues(tmp_path, capsys):
    """One command line for the first start and every restart (torchrun --max-restarts)."""
    run = tmp_path / "run"
    assert main(pretrain_args(run, "train.max_steps=2") + ["--resume", "auto", "--fallback"]) == 0
    assert "resumed from" not in capsys.readouterr().out
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert main(pretrain_args(run, "train.max_steps=4") + ["--resume", "auto", "--fallback"]) == 0
    assert "resumed from" in capsys.readouterr().out
    steps = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["0", "1", "2", "3"]
    # Without a checkpoint the run starts, which needs its config.
    assert main(["pretrain", "--run-dir", str(tmp_path / "new"), "--resume", "auto"]) == 2
    assert "--resume auto: " in capsys.readouterr().err


def test_resume_with_a_different_model_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(pretrain_args(run, "train.max_steps=2")) == 0
    code = main(pretrain_args(run, "train.max_steps=4", "model.depth=2") + ["--resume"])
    assert code == 2
    assert "model.depth" in capsys.readouterr().err
    # another method (or its settings), or another FLOP budget, is another run too
    code = main(pretrain_args(run, "train.max_steps=4", "method.name=mae", "train.budget_minutes=null",
                              "train.budget_flops=1e12") + ["--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "method.name" in err and "train.budget_flops" in err


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.foo=1", "unknown config key 'model.foo'"),
        ("model.img_size=30", "not divisible by model.patch_size"),
        ("optim.loss=l1", "allowed: smooth_l1, l2"),
        ("method.name=simclr", "method.name: got 'simclr'; allowed: ijepa, mae, dino, ijepa_pixels"),
        ("method.mask_ratio=1.5", "method.mask_ratio must be within (0, 1)"),
        ("train.budget_flops=-1", "train.budget_flops must be a finite number > 0"),
        ("data.batch_size=abc", "data.batch_size: expected int"),
        ("data.dataset=imagefolder:/does/not/exist", "image folder not found"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, override, message):
    assert main(pretrain_args(tmp_path / "run", override)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_console_entry_points(tmp_path):
    out = subprocess.run([sys.executable, "-m", "imagejepa", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pretrain" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "imagejepa", "pretrain", "--config", "missing.yaml"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "config file not found" in bad.stderr


def test_every_command_prints_its_help(capsys):
    """``--help`` of every command and subcommand (argparse %-formats help strings: a bare
    ``%`` in one once made ``imagejepa eval --help`` raise)."""
    from imagejepa.cli import _parser

    def commands(parser, prefix=()):
        yield prefix
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, (*prefix, name))

    found = list(commands(_parser()))
    assert ("eval", "lowshot") in found and ("bench", "train") in found
    for command in found:
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0, command
        out = capsys.readouterr().out
        assert out.startswith("usage: ") and "%%" not in out, command


def test_bench_masks_json(capsys):
    assert main(["bench", "masks", "--batch-size", "64", "--grid", "14"]) == 0
    report = last_json(capsys.readouterr().out)
    assert report["bench"] == "masks" and report["vectorised_samples_per_s"] > 0
    assert report["speedup"] > 1
    assert_names_the_machine(report)


def test_bench_data_json(tmp_path, capsys):
    """bench data on tar shards: one worker's decode-and-crop rate, the workers it takes for
    1,000 images/s, and the loader timed with worker processes."""
    assert main(["shard", "--data", "synthetic", "--out", str(tmp_path / "sh"), "--per-shard", "500"]) == 0
    args = ["bench", "data", "--data", f"webdataset:{tmp_path / 'sh' / 'shard-*.tar'}", "--img-size", "64",
            "--batches", "2", "--workers", "1"]
    assert main(args) == 0
    report = last_json(capsys.readouterr().out)
    assert report["bench"] == "data" and report["images"] == 2000 and report["img_size"] == 64
    one = report["images_per_s_one_worker"]
    assert one > 0 and report["workers_per_1000_images_per_s"] == math.ceil(1000 / one)
    assert set(report["images_per_s_by_workers"]) == {"1"} and report["images_per_s_by_workers"]["1"] > 0
    assert_names_the_machine(report)
    assert main(["bench", "data", "--data", "synthetic", "--workers", "x"]) == 2
    assert "--workers: expected numbers like 2,4, got 'x'" in capsys.readouterr().err


def assert_names_the_machine(report):
    """Figures from two machines are never compared blindly: each JSON names the CPU."""
    from imagejepa.utils import cpu

    found = cpu.features()
    assert report["cpu_isa"] == found["isa"]
    assert set(report["cpu_features"]) == {k for k, v in found.items() if v is True}


def test_info_counts_vit_huge(capsys):
    assert main(["info", "vit_huge_patch14"]) == 0
    report = last_json(capsys.readouterr().out)
    assert 625 <= report["params_m"] <= 640 and report["patches"] == 256
    assert main(["info", "vit_enormous"]) == 2


@pytest.mark.slow
def test_bench_train_reports_roofline(capsys):
    assert main(["bench", "train", "--steps", "1", "--warmup", "1", "--eager-only"]) == 0
    report = last_json(capsys.readouterr().out)
    for key in ("img_per_s", "flops_per_img", "achieved_tflops", "matmul_peak_tflops", "roofline_fraction"):
        assert report[key] > 0
    # ViT-T/16 at 224 with 4 targets: about 10 GFLOP per image for forward + backward.
    assert 8e9 < report["flops_per_img"] < 13e9
    assert report["roofline_fraction"] < 1.5
    assert_names_the_machine(report)
    dtype = "bfloat16" if report["precision"] == "bf16" else "float32"
    assert report["matmul_peak_of"].startswith(f"sustained {dtype}")


def test_info_knows_released_checkpoints(capsys):
    assert main(["info", "vit_huge_patch16_448.in1k"]) == 0
    info = last_json(capsys.readouterr().out)
    assert info["model"] == "vit_huge/16@448" and info["patches"] == 784
    assert info["file_name"] == "IN1K-vit.h.16-448px-300e.pth.tar" and info["epochs"] == 300
    assert info["mean"] == [0.485, 0.456, 0.406] and info["url"].endswith(info["file_name"])
    assert main(["info", "vit_huge_patch14.in9k"]) == 2
    assert "known: vit_huge_patch14.in1k" in capsys.readouterr().err


def test_convert_official_to_hf_prints_a_summary(tmp_path, capsys):
    import torch

    from .helpers import official_save_dict, tiny_ijepa

    src = tmp_path / "ckpt.pth.tar"
    torch.save(official_save_dict(tiny_ijepa()), src)
    assert main(["convert", "--to", "hf", str(src), str(tmp_path / "hf")]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["from"] == "official" and summary["encoder"] == "target"
    assert summary["model"] == "vit_tiny/8@32" and (tmp_path / "hf" / "config.json").is_file()
    # The output must not exist yet; the error is one line, exit code 2.
    assert main(["convert", "--to", "hf", str(src), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and len(err.splitlines()) == 1


def test_bench_embed_reports_both_libraries(capsys):
    args = ["bench", "embed", "--model", "vit_tiny_patch16", "--img-size", "32", "--depth", "1",
            "--batch-size", "2", "--steps", "1", "--warmup", "0", "--precision", "fp32"]
    assert main(args) == 0
    report = last_json(capsys.readouterr().out)
    assert report["bench"] == "embed" and report["precision"] == "fp32"
    assert report["img_per_s"] > 0 and report["reference_img_per_s"] > 0
    assert report["speedup"] == pytest.approx(report["img_per_s"] / report["reference_img_per_s"], rel=0.01)
    assert 0 < report["roofline_fraction"] and report["flops_per_img"] > 0
    assert_names_the_machine(report)
    assert "float32 torch.matmul" in report["matmul_peak_of"]
    assert report["max_abs_diff"] <= 1e-4  # the same weights and inputs: the same patch tokens
    assert "IJepaModel (sdpa)" in report["reference"]
    assert main(["bench", "embed", "--img-size", "30", "--model", "vit_tiny_patch16"]) == 2
    assert "not divisible" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_linear_reads_an_official_checkpoint(tmp_path, capsys):
    """eval takes any format load_encoder takes, baselines included (no imagejepa config needed)."""
    import torch

    from .helpers import official_save_dict, tiny_ijepa

    src = tmp_path / "ckpt.pth.tar"
    torch.save(official_save_dict(tiny_ijepa()), src)
    assert main(["eval", "linear", "--checkpoint", str(src), "--data", "synthetic", "--baselines"]) == 0
    report = last_json(capsys.readouterr().out)
    assert set(report["results"]) == {"target", "pixels", "random"}
