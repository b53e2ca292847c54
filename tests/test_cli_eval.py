"""`imagejepa eval` and `imagejepa embed` end to end on a tiny pretrained checkpoint."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from imagejepa.cli import main


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("protocol, extra", [
    ("linear", []),
    ("knn", ["--k", "5", "20"]),
    ("lowshot", ["--shots", "5", "1%", "--seeds", "2"]),
    ("attentive", []),
])
def test_eval_protocol_with_baselines(tiny_checkpoint, tmp_path, capsys, protocol, extra):
    out = tmp_path / "report.json"
    args = ["eval", protocol, "--checkpoint", str(tiny_checkpoint), "--data", "synthetic", "--baselines",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *extra]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = last_json(printed)
    assert report == json.loads(out.read_text())
    assert report["protocol"] == protocol and report["data"] == "synthetic"
    assert report["train_images"] == 2000 and report["test_images"] == 500
    assert set(report["results"]) == {"target", "pixels", "random"}
    for row in ("target encoder", "raw pixels", "random init"):
        assert row in printed.splitlines()[-5] + printed  # the table names every source
    score = {
        "linear": lambda r: r["top1"],
        "knn": lambda r: r["k=5"]["top1"],
        "lowshot": lambda r: r["5-shot"]["top1_mean"],
        "attentive": lambda r: r["top1"],
    }[protocol]
    # the synthetic classes are gratings at 10 angles: easy for features, far above chance (0.1)
    assert score(report["results"]["target"]) > 0.5
    if protocol == "lowshot":
        assert report["results"]["target"]["1%-shot"]["per_class"] == 2


def test_eval_reuses_cached_features(tiny_checkpoint, tmp_path, capsys):
    args = ["eval", "knn", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    assert last_json(capsys.readouterr().out)["cache"] == {"hits": 0, "misses": 2}
    assert main(["eval", "linear", *args[2:]]) == 0
    assert last_json(capsys.readouterr().out)["cache"] == {"hits": 2, "misses": 0}


@pytest.mark.parametrize("args, message", [
    (["eval", "knn", "--k", "0"], "--k values must be >= 1"),
    (["eval", "linear", "--batchnorm"], "--batchnorm needs --solver adamw"),
    (["eval", "lowshot", "--shots", "0"], "neither a count >= 1"),
    (["eval", "linear", "--last-layers", "3"], "within [1, the encoder's depth 1]"),
    (["embed", "--out", "x.csv"], "--out must end in .npy or .safetensors"),
])
def test_eval_usage_errors(tiny_checkpoint, capsys, args, message):
    full = [*args[:2], "--checkpoint", str(tiny_checkpoint), "--data", "synthetic", *args[2:]]
    if args[0] == "embed":
        full = ["embed", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic", *args[1:]]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_eval_missing_checkpoint(tmp_path, capsys):
    assert main(["eval", "linear", "--checkpoint", str(tmp_path / "nope"), "--data", "synthetic"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_embed_npy_and_safetensors(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "feats.npy"
    args = ["embed", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic"]
    assert main([*args, "--out", str(out)]) == 0
    summary = last_json(capsys.readouterr().out)
    feats, labels = np.load(out), np.load(tmp_path / "feats.labels.npy")
    assert feats.shape == (500, 192) and labels.shape == (500,) and summary["shape"] == [500, 192]
    assert set(labels.tolist()) == set(range(10))

    st = tmp_path / "patches.safetensors"
    assert main(["embed", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic", "--out", str(st),
                 "--split", "train", "--patch-tokens"]) == 0
    with safe_open(str(st), "pt") as f:
        patches, labels2 = f.get_tensor("features"), f.get_tensor("labels")
        about = json.loads(f.metadata()["about"])
    assert patches.shape == (2000, 16, 192) and labels2.shape == (2000,)
    assert about["split"] == "train" and about["patch_tokens"] is True
    # pooling the patch tokens gives the pooled features of the same images
    pooled = tmp_path / "pooled.npy"
    assert main(["embed", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic", "--out", str(pooled),
                 "--split", "train"]) == 0
    assert np.allclose(patches.float().mean(1).numpy(), np.load(pooled), atol=2e-3)


def test_embed_image_folder_writes_file_names(tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 36), (i * 40, 80, 120)).save(tmp_path / "imgs" / cls / f"{i}.png")
    out = tmp_path / "f.npy"
    # a folder without val/test subfolders is all training split
    assert main(["embed", "--checkpoint", str(tiny_checkpoint), "--data", f"imagefolder:{tmp_path / 'imgs'}",
                 "--split", "train", "--out", str(out)]) == 0
    names = (tmp_path / "f.names.txt").read_text().split()
    assert len(names) == 6 and names[0].endswith("cats/0.png")
    assert np.load(out).shape == (6, 192)
    assert np.load(tmp_path / "f.labels.npy").tolist() == [0, 0, 0, 1, 1, 1]
