"""scenes: rendered Clevr-like scenes, deterministic from a seed, with labels that say what
the picture holds."""

import math

import pytest
import torch

from imagejepa.data import build_dataset, parse_data_spec
from imagejepa.data import scenes as S
from imagejepa.errors import ConfigError


def layout(objects: list[dict]) -> dict[str, torch.Tensor]:
    """One scene from a list of objects (x, z, kind, size, colour; the other slots empty)."""
    def column(key, default, dtype=torch.float32):
        values = [o.get(key, default) for o in objects] + [default] * (S.SLOTS - len(objects))
        return torch.tensor([values], dtype=dtype)

    return {"present": torch.tensor([[True] * len(objects) + [False] * (S.SLOTS - len(objects))]),
            "kind": column("kind", S.SPHERE, torch.long), "size": column("size", S.SIZES[1]),
            "x": column("x", 0.0), "z": column("z", 0.0), "angle": column("angle", 0.0),
            "colour": column("colour", 0, torch.long), "metal": column("metal", False, torch.bool)}


def pixel_of(point: torch.Tensor, size: int) -> tuple[int, int]:
    """(row, column) where the camera sees ``point``."""
    rays = S.camera_rays(size)
    return divmod(int((rays @ torch.nn.functional.normalize(point - S.CAMERA, dim=0)).argmax()), size)


RED, BLUE = 1, 2


def test_a_constructed_scene_shows_its_objects_where_they_are_and_is_labelled_right():
    near = {"x": 0.0, "z": 1.0, "colour": RED, "kind": S.CUBE}
    far = {"x": 0.0, "z": 2.5, "colour": BLUE, "kind": S.CYLINDER}
    side = {"x": 2.5, "z": -1.0, "colour": BLUE, "kind": S.SPHERE, "size": S.SIZES[0]}
    scene = layout([near, far, side, {"x": -2.5, "z": 2.0}])
    image = S.render(scene, 96)[0].float()  # (3, 96, 96)
    count, dist = S.labels_of(scene)
    assert count.item() == 4 - S.MIN_OBJECTS
    nearest = math.dist((2.5, S.SIZES[0], -1.0), S.CAMERA.tolist())
    assert dist.item() == sum(nearest > e for e in S.DIST_EDGES)

    def colour_at(image, point):
        r, c = pixel_of(torch.tensor(point), 96)
        return image[:, r, c]

    red = colour_at(image, [0.0, 1.25, 1.0])  # the cube's top face
    assert red[0] > red[1] + 30 and red[0] > red[2] + 30
    blue = colour_at(image, [2.5, S.SIZES[0], -1.0])
    assert blue[2] > blue[0] + 30
    ground = image[:, -2, 2]
    assert (ground.max() - ground.min()) < 10 and ground.mean() > 60
    # Occlusion: the cube stands between the camera and the cylinder's centre.
    behind = [0.0, S.SIZES[1], 2.5]
    alone = S.render(layout([far]), 96)[0].float()
    assert colour_at(alone, behind)[2] > colour_at(alone, behind)[0] + 30  # blue when alone
    assert colour_at(image, behind)[0] > colour_at(image, behind)[2] + 30  # red behind the cube


def test_shadows_darken_the_ground_away_from_the_light():
    centre = torch.tensor([0.0, S.SIZES[1], 0.5])
    scene = layout([{"x": 0.0, "z": 0.5, "colour": RED}])
    image = S.render(scene, 128)[0].float()
    empty = S.render(layout([]), 128)[0].float()
    # The sphere's shadow: its centre projected onto the ground along the light, then a little
    # further away from the light (inside the shadow, outside the sphere's own silhouette).
    below = centre - S.LIGHT * (centre[1] / S.LIGHT[1])
    away = torch.nn.functional.normalize(-S.LIGHT * torch.tensor([1.0, 0.0, 1.0]), dim=0)
    r, c = pixel_of(below + 0.4 * away, 128)
    assert (image[:, r, c].max() - image[:, r, c].min()) < 10  # grey ground, not the red sphere
    assert image[:, r, c].mean() < empty[:, r, c].mean() - 40
    r, c = pixel_of(below - 1.5 * away, 128)  # in front of the sphere, towards the light: lit
    assert abs(image[:, r, c].mean() - empty[:, r, c].mean()) < 2


def test_scenes_are_deterministic_from_a_seed_and_two_seeds_differ():
    a = S.render_split(12, 32, seed=5, chunk=5)
    b = S.render_split(12, 32, seed=5, chunk=12)  # the chunking does not change the images
    c = S.render_split(12, 32, seed=6)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["count"], b["count"])
    assert not torch.equal(a["images"], c["images"])
    assert a["images"].shape == (12, 3, 32, 32) and a["images"].dtype == torch.uint8
    assert a["count"].min() >= 0 and a["count"].max() < 8 and a["dist"].max() < 6


def test_layouts_hold_three_to_ten_objects_that_do_not_overlap():
    lay = S.sample_layouts(2000, torch.Generator().manual_seed(0))
    counts = lay["present"].sum(1)
    assert counts.min() >= 3 and counts.max() <= 10 and len(counts.unique()) == 8
    centre = torch.stack([lay["x"], lay["z"]], -1)
    gap = torch.cdist(centre, centre)
    both = lay["present"][:, :, None] & lay["present"][:, None, :] & ~torch.eye(S.SLOTS, dtype=torch.bool)
    reach = lay["size"][:, :, None] + lay["size"][:, None, :]
    assert (gap[both] > reach[both]).all()
    # The distance bins are about equally full on the default scenes.
    _, dist = S.labels_of(lay)
    assert dist.bincount(minlength=6).min() > 2000 / 6 * 0.7


def test_the_spec_reads_both_tasks_from_one_cached_render(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEJEPA_CACHE", str(tmp_path))
    count = build_dataset("scenes:count,train=8,test=4,size=24,seed=3", train=True)
    assert len(count) == 8 and count.images.shape == (8, 3, 24, 24) and count.classes[0] == "3"
    assert len(list((tmp_path / "scenes").glob("*.safetensors"))) == 1
    rendered = []
    monkeypatch.setattr(S, "render_split", lambda *a, **k: rendered.append(a))
    dist = build_dataset("scenes:dist,train=8,test=4,size=24,seed=3", train=True)
    assert rendered == [] and torch.equal(dist.images, count.images)  # from the cache
    assert dist.classes == tuple(f"bin{k}" for k in range(6))


@pytest.mark.parametrize("spec", ["scenes", "scenes:colour", "scenes:count,size=8", "scenes:count,width=3",
                                  "scenes:dist,train=-1"])
def test_a_bad_scenes_spec_names_what_is_allowed(spec):
    with pytest.raises(ConfigError, match="scenes"):
        parse_data_spec(spec)
