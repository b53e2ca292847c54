"""Tests of data specs, Fashion-MNIST IDX reading, transforms and the deterministic loader."""

from __future__ import annotations

import gzip
import itertools
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imagejepa.data.fashion_mnist as fm
from imagejepa.config import ConfigError
from imagejepa.data import (
    DataSpec,
    EvalTransform,
    TrainLoader,
    TrainTransform,
    build_dataset,
    check_data_path,
    eval_batches,
    parse_data_spec,
)
from imagejepa.data.synthetic import make_synthetic
from imagejepa.data.transforms import CROP_RATIO, crop_params, match_channels


# -- data specs -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec,expected",
    [
        ("fashion-mnist", DataSpec("fashion-mnist", None)),
        ("fashion-mnist:/x", DataSpec("fashion-mnist", "/x")),
        ("imagefolder:/x", DataSpec("imagefolder", "/x")),
        ("imagefolder:C:/data", DataSpec("imagefolder", "C:/data")),
        ("synthetic", DataSpec("synthetic", None)),
    ],
)
def test_parse_data_spec_accepts(spec, expected):
    assert parse_data_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["imagenet", "imagefolder", "imagefolder:", "synthetic:3", "webdataset", "", "mnist"]
)
def test_parse_data_spec_rejects(spec):
    with pytest.raises(ConfigError):
        parse_data_spec(spec)


# -- IDX files ------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["arr-idx3-ubyte", "arr-idx3-ubyte.gz"])
def test_read_idx(tmp_path, name):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(3, 5, 4), dtype=np.uint8)
    out = fm.read_idx(write_idx(tmp_path / name, array))
    assert out.shape == (3, 5, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)
    labels = np.array([1, 0, 9, 3], dtype=np.uint8)
    np.testing.assert_array_equal(fm.read_idx(write_idx(tmp_path / ("l" + name), labels)), labels)


def test_read_idx_errors(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    truncated = tmp_path / "trunc"
    truncated.write_bytes(idx_bytes(array)[:-5])
    with pytest.raises(ValueError, match="truncated"):
        fm.read_idx(truncated)
    not_idx = tmp_path / "not_idx"
    not_idx.write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX"):
        fm.read_idx(not_idx)


def make_fmnist_folder(folder: Path, gz: bool = False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    data = {
        True: (rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)),
        False: (rng.integers(0, 256, (10, 28, 28)), rng.integers(0, 10, 10)),
    }
    suffix = ".gz" if gz else ""
    for train, (images, labels) in data.items():
        img_name, lbl_name = fm.FILES[train]
        write_idx(folder / (img_name + suffix), images)
        write_idx(folder / (lbl_name + suffix), labels)
    return data


def check_fmnist(ds, images, labels):
    assert ds.images.shape == (len(labels), 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    assert ds.classes == fm.CLASSES and len(ds.classes) == 10
    image, label = ds.load(3)
    assert torch.equal(image, ds.images[3]) and label == labels[3]


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """No default folders, and any use of torchvision's downloading dataset is an error."""
    import torchvision.datasets

    def downloads(*args, **kwargs):
        raise AssertionError("Fashion-MNIST must never be downloaded at run time")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", downloads)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian-dir")
    monkeypatch.delenv("IMAGEJEPA_DATA", raising=False)


@pytest.mark.parametrize("gz", [False, True])
def test_load_fashion_mnist_from_folder(tmp_path, no_download, gz):
    data = make_fmnist_folder(tmp_path / "fm", gz=gz)
    check_fmnist(fm.load_fashion_mnist(str(tmp_path / "fm"), train=True), *data[True])
    check_fmnist(fm.load_fashion_mnist(str(tmp_path / "fm"), train=False), *data[False])
    # Through the data spec too.
    ds = build_dataset(f"fashion-mnist:{tmp_path / 'fm'}", train=False)
    assert len(ds) == 10


def test_load_fashion_mnist_from_env_and_debian_dir(tmp_path, monkeypatch, no_download):
    data = make_fmnist_folder(tmp_path / "env")
    monkeypatch.setenv("IMAGEJEPA_DATA", str(tmp_path / "env"))
    check_fmnist(fm.load_fashion_mnist(None, train=True), *data[True])
    monkeypatch.delenv("IMAGEJEPA_DATA")
    with pytest.raises(FileNotFoundError):
        fm.load_fashion_mnist(None, train=True)
    data = make_fmnist_folder(tmp_path / "debian")
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    check_fmnist(fm.load_fashion_mnist(None, train=False), *data[False])


def test_missing_fashion_mnist_explains_how_to_get_it(tmp_path, no_download):
    with pytest.raises(FileNotFoundError) as info:
        fm.load_fashion_mnist(str(tmp_path / "nowhere"), train=True)
    msg = str(info.value)
    assert "dataset-fashion-mnist" in msg and "IMAGEJEPA_DATA" in msg
    assert str(tmp_path / "nowhere") in msg


# -- synthetic data -------------------------------------------------------------------------
def test_make_synthetic_deterministic_and_balanced():
    a = make_synthetic(num_images=40, num_classes=4, size=16, seed=0)
    b = make_synthetic(num_images=40, num_classes=4, size=16, seed=0)
    c = make_synthetic(num_images=40, num_classes=4, size=16, seed=1)
    assert a.images.shape == (40, 3, 16, 16) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels, minlength=4).tolist() == [10, 10, 10, 10]
    assert not torch.equal(a.labels, torch.arange(40) % 4)  # shuffled
    # Every image differs, even within a class.
    flat = a.images.flatten(1).float()
    assert torch.cdist(flat, flat).add(torch.eye(40) * 1e6).min() > 0
    grey = make_synthetic(num_images=10, channels=1, size=8)
    assert grey.images.shape == (10, 1, 8, 8) and len(grey.mean) == 1


# -- transforms -----------------------------------------------------------------------------
def test_train_transform_shape_dtype_determinism():
    ds = make_synthetic(num_images=4, size=16)
    t = TrainTransform(size=8, in_chans=3, mean=ds.mean, std=ds.std, crop_scale=(0.3, 1.0))
    image = ds.images[0]
    out = t(image, torch.Generator().manual_seed(5))
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert torch.equal(out, t(image, torch.Generator().manual_seed(5)))
    outs = [t(image, torch.Generator().manual_seed(s)) for s in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    # Normalised: a full-image crop at the same size is exactly (x/255 - mean) / std.
    full = TrainTransform(size=16, in_chans=3, mean=ds.mean, std=ds.std, crop_scale=(1.0, 1.0))
    expected = (image.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(full(image, torch.Generator().manual_seed(0)), expected)


def test_crop_params_within_image_and_scale():
    H, W = 60, 80
    for scale in [(0.3, 1.0), (0.08, 0.2), (0.9, 1.0)]:
        g = torch.Generator().manual_seed(0)
        for _ in range(200):
            top, left, h, w = crop_params(H, W, scale, g)
            assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
            assert h > 0 and w > 0
            # Area within scale, up to rounding h and w to integers.
            slack = 0.5 * (h + w) + 0.25
            assert scale[0] * H * W - slack <= h * w <= scale[1] * H * W + slack
            assert CROP_RATIO[0] * 0.9 <= w / h <= CROP_RATIO[1] * 1.1


def test_crop_params_center_fallback_matches_torchvision():
    from torchvision.transforms import RandomResizedCrop

    # A 4x100 strip cannot hold 90% of its area at aspect 3/4..4/3: all tries fail.
    g = torch.Generator().manual_seed(0)
    box = crop_params(4, 100, (0.9, 1.0), g)
    expected = RandomResizedCrop.get_params(torch.zeros(1, 4, 100), [0.9, 1.0], list(CROP_RATIO))
    assert box == tuple(expected) == (0, 47, 4, 5)
    tall = crop_params(100, 4, (0.9, 1.0), g)
    expected = RandomResizedCrop.get_params(torch.zeros(1, 100, 4), [0.9, 1.0], list(CROP_RATIO))
    assert tall == tuple(expected)


def test_match_channels():
    torch.manual_seed(0)
    grey = torch.randint(0, 256, (1, 5, 6), dtype=torch.uint8)
    rgb = match_channels(grey, 3)
    assert rgb.shape == (3, 5, 6) and all(torch.equal(rgb[c], grey[0]) for c in range(3))
    color = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8)  # batched
    g1 = match_channels(color, 1)
    assert g1.shape == (2, 1, 5, 6) and g1.dtype == torch.uint8
    luma = 0.2989 * color[:, 0] + 0.587 * color[:, 1] + 0.114 * color[:, 2]
    assert (g1[:, 0].float() - luma).abs().max() <= 1.0
    rgba = torch.randint(0, 256, (4, 5, 6), dtype=torch.uint8)
    assert torch.equal(match_channels(rgba, 3), rgba[:3])
    assert torch.equal(match_channels(rgba, 1), match_channels(rgba[:3], 1))
    assert match_channels(color, 3) is color
    with pytest.raises(ValueError, match="2-channel"):
        match_channels(torch.zeros(2, 4, 4, dtype=torch.uint8), 3)


def test_eval_transform():
    image = torch.randint(0, 256, (2, 1, 12, 16), dtype=torch.uint8)
    t = EvalTransform(size=8, in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = t(image)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    same = EvalTransform(size=12, in_chans=1, mean=(0.0,), std=(1.0,))
    torch.testing.assert_close(same(image[..., :12]), image[..., :12].float() / 255)


# -- the training loader --------------------------------------------------------------------
def small_loader(seed=0, start_step=0, num_workers=0, batch_size=4):
    ds = make_synthetic(num_images=12, size=16, seed=0)
    t = TrainTransform(size=8, in_chans=3, mean=ds.mean, std=ds.std)
    return TrainLoader(ds, t, batch_size=batch_size, seed=seed, num_workers=num_workers,
                       start_step=start_step)


def take(loader, n):
    """The first n ``(images, labels)`` of a loader (its third item, skipped files, dropped)."""
    return [batch[:2] for batch in itertools.islice(iter(loader), n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_train_loader_deterministic():
    loader = small_loader()
    assert loader.steps_per_epoch == 3
    a = take(loader, 7)  # crosses two epoch boundaries
    assert a[0][0].shape == (4, 3, 8, 8) and a[0][1].shape == (4,)
    assert_same_batches(a, take(small_loader(), 7))
    other = take(small_loader(seed=1), 1)
    assert not torch.equal(a[0][0], other[0][0])
    # One epoch sees every image exactly once (labels: 12 images, 10 classes).
    ds = make_synthetic(num_images=12, size=16, seed=0)
    epoch_labels = torch.cat([y for _, y in a[:3]]).sort().values
    assert torch.equal(epoch_labels, ds.labels.sort().values)
    # Epochs are reshuffled.
    assert any(not torch.equal(a[i][1], a[i + 3][1]) for i in range(3))


def test_train_loader_batches_are_a_function_of_seed_epoch_index():
    """Batch s of epoch e: images perm_e[s*B:(s+1)*B], each cropped with seed (seed, e, i)."""
    from imagejepa.utils.seeds import mix_seed

    loader = small_loader(seed=3)
    ds = make_synthetic(num_images=12, size=16, seed=0)
    t = TrainTransform(size=8, in_chans=3, mean=ds.mean, std=ds.std)
    batches = take(loader, 5)
    for step, (images, labels) in enumerate(batches):
        epoch, pos = divmod(step, 3)
        indices = loader.sampler.permutation(epoch)[pos * 4 : (pos + 1) * 4].tolist()
        expected = torch.stack([
            t(ds.images[i], torch.Generator().manual_seed(mix_seed(3, epoch, i))) for i in indices
        ])
        assert torch.equal(images, expected)
        assert torch.equal(labels, ds.labels[indices])
    # Distinct streams: mixing is sensitive to every part.
    assert len({mix_seed(0, 0, 1), mix_seed(0, 1, 0), mix_seed(1, 0, 0), mix_seed(0, 0, 0)}) == 4


def test_train_loader_resume_at_step():
    full = take(small_loader(), 6)
    for k in (1, 3, 4):
        assert_same_batches(take(small_loader(start_step=k), 6 - k), full[k:])


def test_train_loader_workers_do_not_change_batches():
    assert_same_batches(take(small_loader(num_workers=1, start_step=2), 2),
                        take(small_loader(start_step=2), 2))


def test_train_loader_too_small_dataset():
    with pytest.raises(ValueError, match="fewer than one batch"):
        small_loader(batch_size=13)


def test_eval_batches_in_memory_in_order():
    ds = make_synthetic(num_images=10, size=16, seed=0)
    t = EvalTransform(size=8, in_chans=3, mean=ds.mean, std=ds.std)
    batches = list(eval_batches(ds, t, batch_size=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), ds.labels)
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), t(ds.images))


# -- image folders --------------------------------------------------------------------------
def make_image_folder(root: Path, per_class: int = 3, size=(12, 10)) -> dict:
    rng = np.random.default_rng(2)
    pixels = {}
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(array).save(root / cls / f"{i}.png")
            pixels[(cls, i)] = array
    return pixels


def test_imagefolder_dataset(tmp_path):
    pixels = make_image_folder(tmp_path / "images")
    ds = build_dataset(f"imagefolder:{tmp_path / 'images'}")
    assert len(ds) == 6 and ds.classes == ("cat", "dog")
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    image, label = ds.load(4)
    assert label == 1 and image.dtype == torch.uint8 and image.shape == (3, 10, 12)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), pixels[("dog", 1)])
    # Evaluation needs a val/test split.
    with pytest.raises(FileNotFoundError, match="val"):
        build_dataset(f"imagefolder:{tmp_path / 'images'}", train=False)
    with pytest.raises(FileNotFoundError):
        build_dataset(f"imagefolder:{tmp_path / 'missing'}")
    t = EvalTransform(size=8, in_chans=3, mean=ds.mean, std=ds.std)
    batches = list(eval_batches(ds, t, batch_size=4))
    assert torch.equal(torch.cat([y for _, y in batches]), ds.labels)
    assert batches[0][0].shape == (4, 3, 8, 8)
    torch.testing.assert_close(batches[1][0][0], t(ds.load(4)[0]))


def test_imagefolder_train_and_val_splits(tmp_path):
    make_image_folder(tmp_path / "root" / "train", per_class=2)
    make_image_folder(tmp_path / "root" / "val", per_class=1)
    assert len(build_dataset(f"imagefolder:{tmp_path / 'root'}", train=True)) == 4
    assert len(build_dataset(f"imagefolder:{tmp_path / 'root'}", train=False)) == 2


def test_crop_area_fraction_distribution_matches_torchvision():
    """Same rule as RandomResizedCrop.get_params: the area fractions have the same spread
    (rejection of boxes that do not fit pulls the mean below the middle of the range)."""
    from torchvision.transforms import RandomResizedCrop

    g = torch.Generator().manual_seed(1)
    ours = [math.prod(crop_params(200, 200, (0.3, 1.0), g)[2:]) / 40000 for _ in range(1000)]
    torch.manual_seed(1)
    image = torch.zeros(1, 200, 200)
    theirs = [
        math.prod(RandomResizedCrop.get_params(image, [0.3, 1.0], list(CROP_RATIO))[2:]) / 40000
        for _ in range(1000)
    ]
    assert min(ours) < 0.32 and max(ours) > 0.97
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.03
    assert abs(np.std(ours) - np.std(theirs)) < 0.03


# -- awkward and broken image files ---------------------------------------------------------
def test_read_image_converts_modes_and_depths(tmp_path):
    from imagejepa.data.base import read_image

    wide = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "gray16.png")  # 16-bit grey: scaled, not clipped
    assert read_image(tmp_path / "gray16.png").tolist() == [[[0, 100, 255]]]
    Image.new("CMYK", (4, 3), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")  # no ink: white
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (3, 3, 4) and cmyk.min() >= 250
    Image.new("RGBA", (5, 2), (10, 20, 30, 0)).save(tmp_path / "rgba.png")  # alpha dropped
    assert read_image(tmp_path / "rgba.png")[:, 0, 0].tolist() == [10, 20, 30]
    Image.new("LA", (2, 2), (77, 255)).save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").tolist() == [[[77, 77], [77, 77]]]
    Image.new("RGB", (2, 2), (255, 0, 0)).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png")[:, 0, 0].tolist() == [255, 0, 0]


def test_tiny_images_are_upscaled_by_the_crop(tmp_path):
    from imagejepa.data.base import read_image

    Image.fromarray(np.full((2, 3, 3), 128, dtype=np.uint8)).save(tmp_path / "tiny.png")
    t = TrainTransform(size=32, in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = t(read_image(tmp_path / "tiny.png"), torch.Generator().manual_seed(0))
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, torch.full_like(out, (128 / 255 - 0.5) / 0.5))


@pytest.mark.parametrize("name, content, reason", [
    ("empty.png", b"", "cannot identify image file"),
    ("text.jpg", b"hello, not an image", "cannot identify image file"),
    ("truncated.png", None, "truncated"),
])
def test_broken_files_raise_naming_the_file(tmp_path, name, content, reason):
    import io

    from imagejepa.data import BadImageError
    from imagejepa.data.base import read_image

    if content is None:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8) + 9).save(buf, "PNG")
        content = buf.getvalue()[:-40]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadImageError, match=reason) as info:
        read_image(tmp_path / name)
    assert str(info.value).startswith(f"{tmp_path / name}: ") and info.value.path == str(tmp_path / name)


def test_loader_replaces_broken_files_deterministically(tmp_path):
    from imagejepa.data import BadImageError

    make_image_folder(tmp_path / "images", per_class=4, size=(12, 12))
    (tmp_path / "images" / "dog" / "0.png").write_bytes(b"broken")
    ds = build_dataset(f"imagefolder:{tmp_path / 'images'}")
    t = TrainTransform(size=8, in_chans=3, mean=ds.mean, std=ds.std)
    loader = lambda **kw: TrainLoader(ds, t, batch_size=4, seed=0, **kw)
    first = list(itertools.islice(iter(loader()), 4))  # two epochs of 8 files
    skipped = [s for _, _, batch_skipped in first for s in batch_skipped]
    assert len(skipped) >= 2 and {path for path, _ in skipped} == {str(tmp_path / "images/dog/0.png")}
    assert all(images.shape == (4, 3, 8, 8) for images, _, _ in first)
    again = list(itertools.islice(iter(loader()), 4))
    for (a, la, sa), (b, lb, sb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(la, lb) and sa == sb
    with pytest.raises(BadImageError, match="dog/0.png"):
        list(itertools.islice(iter(loader(on_error="raise")), 4))


# -- tar shards -----------------------------------------------------------------------------
def test_shards_hold_the_image_folder_exactly(tmp_path, capsys):
    """`imagejepa shard` packs an image folder into tar shards (webdataset layout: KEY.png,
    KEY.cls); webdataset:PATTERN reads back every image, label and class name, by random
    access, with glob and brace patterns alike."""
    from imagejepa.cli import main

    make_image_folder(tmp_path / "images", per_class=5)
    folder = build_dataset(f"imagefolder:{tmp_path / 'images'}")
    assert main(["shard", "--data", f"imagefolder:{tmp_path / 'images'}", "--out", str(tmp_path / "sh"),
                 "--per-shard", "4"]) == 0
    assert "10 images in 3 shard(s)" in capsys.readouterr().out
    for pattern in ("shard-{000000..000002}.tar", "shard-*.tar"):
        shards = build_dataset(f"webdataset:{tmp_path / 'sh' / pattern}")
        assert len(shards) == 10 and shards.classes == ("cat", "dog")
        assert shards.mean == folder.mean and torch.equal(shards.labels, folder.labels)
        for i in (7, 0, 9, 3):  # any order: each read seeks to its member
            image, label = shards.load(i)
            assert torch.equal(image, folder.load(i)[0]) and label == folder.load(i)[1]
    names = sorted(p.name for p in (tmp_path / "sh").iterdir())
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shards.json"]
    # Packing again into the same folder is refused; a pattern matching nothing is an error.
    assert main(["shard", "--data", "synthetic", "--out", str(tmp_path / "sh")]) == 2
    with pytest.raises(ConfigError, match="no shard file matches"):
        check_data_path(f"webdataset:{tmp_path / 'none-*.tar'}")
