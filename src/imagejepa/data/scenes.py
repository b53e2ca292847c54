"""``scenes``: rendered Clevr-like scenes for the paper's low-level tasks (VTAB's Clevr/Count
and Clevr/Dist), made here, deterministic from a seed.

Each scene is a grey ground plane seen in perspective with 3 to 10 objects on it: spheres,
cubes and cylinders, in 8 colours, 2 sizes and 2 materials (matte rubber, shiny metal),
placed without overlapping, lit by one directional light with hard shadows and an ambient
term. Objects hide each other as they would in a photograph. Rendering is ray casting,
vectorised over scenes x pixels x object slots (a scene has 10 slots, unused ones empty), one
primary ray a pixel and one shadow ray a visible point.

Labels: ``count`` is the number of objects (8 classes, "3" to "10"); ``dist`` the distance from
the camera to the nearest object's centre in 6 bins (:data:`DIST_EDGES`, set so that the
default scenes fill the bins about equally, as Clevr/Dist's bins of the nearest object's depth).

Data specs: ``scenes:count`` or ``scenes:dist``, optionally with ``,train=N,test=M,size=S,seed=K``
(defaults :data:`DEFAULTS`). The train and test splits are drawn from different seeds. Rendered
images are cached as safetensors under ``$IMAGEJEPA_CACHE/scenes`` (default
``~/.cache/imagejepa/scenes``), one file per (seed, split, size, number), holding both labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..utils.files import atomic_write, cache_root
from .base import TensorImageDataset

VERSION = 1  # bump when the renderer changes what it draws: cached files are keyed on it
TASKS = ("count", "dist")
DEFAULTS = {"train": 50_000, "test": 10_000, "size": 64, "seed": 0}
SLOTS = 10  # the most objects a scene holds
MIN_OBJECTS = 3
DIST_EDGES = (8.17, 8.35, 8.54, 8.78, 9.2)  # camera to nearest centre: sextiles of 50,000 layouts
COLOURS = torch.tensor([  # Clevr's eight: grey, red, blue, green, brown, purple, cyan, yellow
    [87, 87, 87], [173, 35, 35], [42, 75, 215], [29, 105, 20],
    [129, 74, 25], [129, 38, 192], [41, 208, 208], [255, 238, 51]], dtype=torch.float32) / 255
SIZES = (0.35, 0.65)  # radius or half side
SPHERE, CUBE, CYLINDER = 0, 1, 2
CAMERA = torch.tensor([0.0, 5.0, -9.0])
LOOK_AT = torch.tensor([0.0, 0.0, 0.5])
FIELD_OF_VIEW = math.radians(38)
LIGHT = torch.nn.functional.normalize(torch.tensor([-0.45, 1.0, -0.35]), dim=0)  # towards the light
AREA = (3.3, 3.0)  # objects' centres within |x| <= 3.3, |z - 0.5| <= 3.0
FAR = 1e4
EPS = 1e-3


def sample_layouts(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Objects of ``n`` scenes, ``(n, SLOTS)`` each: present, kind, size, x, z, angle, colour,
    metal. Counts are drawn uniformly from 3 to 10; an object that finds no free place among 64
    tries is left out (rare), so ``present.sum(1)`` is the true count."""
    count = torch.randint(MIN_OBJECTS, SLOTS + 1, (n,), generator=generator)
    kind = torch.randint(0, 3, (n, SLOTS), generator=generator)
    size = torch.tensor(SIZES)[torch.randint(0, 2, (n, SLOTS), generator=generator)]
    angle = torch.rand(n, SLOTS, generator=generator) * (math.pi / 2)
    colour = torch.randint(0, len(COLOURS), (n, SLOTS), generator=generator)
    metal = torch.rand(n, SLOTS, generator=generator) < 0.5
    tries = torch.rand(n, SLOTS, 64, 2, generator=generator) * 2 - 1
    x_all, z_all = tries[..., 0] * AREA[0], tries[..., 1] * AREA[1] + 0.5
    present = torch.zeros(n, SLOTS, dtype=torch.bool)
    x, z = torch.zeros(n, SLOTS), torch.zeros(n, SLOTS)
    for k in range(SLOTS):
        gap = torch.hypot(x_all[:, k, :, None] - x[:, None, :], z_all[:, k, :, None] - z[:, None, :])
        clear = gap > (size[:, k, None, None] + size[:, None, :]) * 1.15 + 0.1  # (n, 64, SLOTS)
        free = (clear | ~present[:, None, :]).all(-1)  # (n, 64)
        first = free.float().argmax(1)
        placed = free.any(1) & (k < count)
        x[:, k] = torch.where(placed, x_all[:, k].gather(1, first[:, None])[:, 0], 0.0)
        z[:, k] = torch.where(placed, z_all[:, k].gather(1, first[:, None])[:, 0], 0.0)
        present[:, k] = placed
    return {"present": present, "kind": kind, "size": size, "x": x, "z": z, "angle": angle,
            "colour": colour, "metal": metal}


def labels_of(layout: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(count class, dist class)``, int64 ``(n,)`` each: the number of objects minus 3, and
    the bin of the camera's distance to the nearest object's centre."""
    centre = torch.stack([layout["x"], layout["size"], layout["z"]], -1)  # (n, SLOTS, 3)
    distance = (centre - CAMERA).norm(dim=-1).masked_fill(~layout["present"], math.inf)
    nearest = distance.min(1).values
    return layout["present"].sum(1) - MIN_OBJECTS, torch.bucketize(nearest, torch.tensor(DIST_EDGES))


def camera_rays(size: int) -> torch.Tensor:
    """Unit directions ``(size * size, 3)`` of the primary rays, row by row from the top left."""
    forward = torch.nn.functional.normalize(LOOK_AT - CAMERA, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), forward), dim=0)
    up = torch.linalg.cross(forward, right)
    ticks = (torch.arange(size) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(-ticks, ticks, indexing="ij")
    half = math.tan(FIELD_OF_VIEW / 2)
    rays = forward + half * (u[..., None] * right + v[..., None] * up)
    return torch.nn.functional.normalize(rays.reshape(-1, 3), dim=-1)


BOUNDING = {SPHERE: 1.0, CUBE: math.sqrt(3), CYLINDER: math.sqrt(2)}  # bounding sphere / size


def _sphere(o: torch.Tensor, d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """First hit ``t (M,)`` of rays ``o + t d`` (``(M, 3)``, o relative to the centre) with
    spheres of radius ``r (M,)``; FAR for a miss."""
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - r * r)
    t = -b - disc.clamp_min(0).sqrt()
    return torch.where((disc > 0) & (t > EPS), t, FAR)


def _cylinder(o: torch.Tensor, d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Upright cylinders of radius ``r`` from ``-r`` to ``r`` about the centre: the side, then
    the top cap (the bottom one stands on the ground)."""
    ox, oy, oz, dx, dy, dz = *o.unbind(-1), *d.unbind(-1)
    a = (dx * dx + dz * dz).clamp_min(1e-12)
    b = ox * dx + oz * dz
    disc = b * b - a * (ox * ox + oz * oz - r * r)
    side = (-b - disc.clamp_min(0).sqrt()) / a
    side = torch.where((disc > 0) & (side > EPS) & ((oy + side * dy).abs() <= r), side, FAR)
    cap = (r - oy) / torch.where(dy.abs() < 1e-9, torch.full_like(dy, 1e-9), dy)
    inside = (ox + cap * dx) ** 2 + (oz + cap * dz) ** 2 <= r * r
    return torch.minimum(side, torch.where(inside & (cap > EPS), cap, FAR))


def _cube(o: torch.Tensor, d: torch.Tensor, r: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Cubes of half side ``r`` turned by ``angle`` about the vertical: the slab method in the
    cube's own frame."""
    o, d = _turn(o, -angle), _turn(d, -angle)
    d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t1, t2 = (-r[:, None] - o) / d, (r[:, None] - o) / d
    near = torch.minimum(t1, t2).amax(-1)
    far = torch.maximum(t1, t2).amin(-1)
    return torch.where((far >= near) & (near > EPS), near, FAR)


def _turn(v: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Vectors ``(..., 3)`` turned by ``angle (...)`` about the vertical axis."""
    c, s = angle.cos(), angle.sin()
    return torch.stack([c * v[..., 0] - s * v[..., 2], v[..., 1], s * v[..., 0] + c * v[..., 2]], -1)


def _bounds(obj: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``(B, SLOTS, 3)`` and bounding-sphere radii ``(B, SLOTS)`` (0 for empty slots)."""
    centre = torch.stack([obj["x"], obj["size"], obj["z"]], -1)
    radius = obj["size"] * torch.tensor([BOUNDING[k] for k in range(3)])[obj["kind"]] * 1.01
    return centre, radius * obj["present"]


def near_from_camera(rays: torch.Tensor, obj: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which of the camera's rays ``(P, 3)`` pass through which objects' bounding spheres:
    bool ``(B, P, SLOTS)``."""
    centre, radius = _bounds(obj)
    rel = (centre - CAMERA).flatten(0, 1)  # (B * SLOTS, 3)
    along = (rays @ rel.T).view(rays.shape[0], *radius.shape).transpose(0, 1)  # (B, P, SLOTS)
    gap2 = (rel * rel).sum(-1).view_as(radius)[:, None, :] - along * along
    return (gap2 <= (radius * radius)[:, None, :]) & (along > 0)


def near_towards_light(points: torch.Tensor, obj: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which rays from ``points (B, P, 3)`` towards the light pass through which bounding
    spheres: bool ``(B, P, SLOTS)``, from coordinates across the light's direction."""
    centre, radius = _bounds(obj)
    across = torch.linalg.svd(LIGHT[None]).Vh[1:].T  # (3, 2): two directions across the light
    point_uv, centre_uv = points @ across, centre @ across  # (B, P, 2), (B, SLOTS, 2)
    du = point_uv[..., 0, None] - centre_uv[:, None, :, 0]  # (B, P, SLOTS)
    dv = point_uv[..., 1, None] - centre_uv[:, None, :, 1]
    ahead = (centre @ LIGHT)[:, None, :] - (points @ LIGHT)[..., None]
    return (du * du + dv * dv <= (radius * radius)[:, None, :]) & (ahead > -radius[:, None, :])


def first_hits(origin: torch.Tensor, direction: torch.Tensor, obj: dict[str, torch.Tensor],
               candidates: torch.Tensor):
    """The nearest object hit by each ray: ``(t (B, P), slot (B, P))``, t = FAR for a miss.

    origin, direction: ``(B, P, 3)`` (unit directions); objects ``(B, SLOTS)``; ``candidates``
    bool ``(B, P, SLOTS)``, the ray-object pairs that can hit (a cheap bounding-sphere test):
    only those are intersected exactly, each with its own shape's formula.
    """
    batch, pixels = origin.shape[:2]
    centre = torch.stack([obj["x"], obj["size"], obj["z"]], -1)
    b, p, k = candidates.nonzero(as_tuple=True)
    o, d = origin[b, p] - centre[b, k], direction[b, p]
    r, kind = obj["size"][b, k], obj["kind"][b, k]
    t = torch.full_like(r, FAR)
    for shape, hit in ((SPHERE, _sphere), (CYLINDER, _cylinder)):
        sel = kind == shape
        t[sel] = hit(o[sel], d[sel], r[sel])
    sel = kind == CUBE
    t[sel] = _cube(o[sel], d[sel], r[sel], obj["angle"][b[sel], k[sel]])
    ray = b * pixels + p
    nearest = torch.full((batch * pixels,), FAR).scatter_reduce(0, ray, t, "amin")
    won = (t == nearest[ray]) & (t < FAR)
    slot = torch.zeros(batch * pixels, dtype=torch.long)
    slot[ray[won]] = k[won]
    return nearest.view(batch, pixels), slot.view(batch, pixels)


def surface_normals(point: torch.Tensor, obj: dict[str, torch.Tensor]) -> torch.Tensor:
    """Unit normals ``(B, P, 3)`` at ``point (B, P, 3)`` on the objects ``obj`` (each ``(B, P)``:
    the object each point lies on)."""
    rel = point - torch.stack([obj["x"], obj["size"], obj["z"]], -1)
    r = obj["size"]
    sphere = rel / r[..., None]
    on_cap = rel[..., 1] > r - 10 * EPS
    radial = torch.stack([rel[..., 0], torch.zeros_like(r), rel[..., 2]], -1)
    cylinder = torch.where(on_cap[..., None], torch.tensor([0.0, 1.0, 0.0]), radial)
    local = _turn(rel, -obj["angle"])
    cube = _turn(torch.nn.functional.one_hot(local.abs().argmax(-1), 3) * local.sign(), obj["angle"])
    kind = obj["kind"][..., None]
    normal = torch.where(kind == SPHERE, sphere, torch.where(kind == CUBE, cube, cylinder))
    return torch.nn.functional.normalize(normal, dim=-1)


def render(layout: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """uint8 images ``(B, 3, size, size)`` of the scenes in ``layout`` (each ``(B, SLOTS)``)."""
    batch = layout["present"].shape[0]
    rays = camera_rays(size).expand(batch, -1, -1)  # (B, P, 3)
    t_near, which = first_hits(CAMERA.expand_as(rays), rays, layout, near_from_camera(rays[0], layout))
    t_ground = torch.where(rays[..., 1] < 0, -CAMERA[1] / rays[..., 1].clamp(max=-1e-9), FAR)
    on_object = t_near < t_ground
    t = torch.where(on_object, t_near, t_ground)
    point = CAMERA + t[..., None] * rays  # (B, P, 3)
    mine = {k: v.gather(1, which) for k, v in layout.items()}  # (B, P): the object under each pixel
    normal = torch.where(on_object[..., None], surface_normals(point, mine), torch.tensor([0.0, 1.0, 0.0]))
    # Hard shadows: does a ray from the point towards the light hit any object?
    start = point + 2 * EPS * normal
    shadow_t, _ = first_hits(start, LIGHT.expand_as(point), layout, near_towards_light(start, layout))
    lit = (shadow_t >= FAR).float()
    diffuse = (normal @ LIGHT).clamp_min(0) * lit
    gloss = (normal * torch.nn.functional.normalize(LIGHT - rays, dim=-1)).sum(-1).clamp_min(0)
    metal = mine["metal"] & on_object
    colour = torch.where(on_object[..., None], COLOURS[mine["colour"]], torch.tensor(0.62))
    shade = 0.35 + 0.65 * diffuse * torch.where(metal, 0.6, 1.0)
    specular = lit * torch.where(metal, 0.9 * gloss ** 40, 0.12 * gloss ** 6 * on_object)
    haze = 0.1 * (t_ground / 30).clamp(max=1) * ~on_object  # the ground pales with distance
    rgb = colour * shade[..., None] + (specular + haze)[..., None]
    rgb = torch.where((rays[..., 1] >= 0)[..., None], torch.tensor(0.75), rgb)  # above the horizon
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).transpose(1, 2).reshape(batch, 3, size, size)


def render_split(n: int, size: int, seed: int, chunk: int = 64) -> dict[str, torch.Tensor]:
    """``n`` scenes from ``seed``: ``images`` uint8 ``(n, 3, size, size)``, ``count`` and
    ``dist`` int64 ``(n,)``. The layouts are drawn all at once, so the images do not depend on
    ``chunk``."""
    layout = sample_layouts(n, torch.Generator().manual_seed(seed))
    count, dist = labels_of(layout)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    with torch.no_grad():
        for start in range(0, n, chunk):
            part = {k: v[start:start + chunk] for k, v in layout.items()}
            images[start:start + chunk] = render(part, size)
    return {"images": images, "count": count, "dist": dist}


def parse_options(arg: str) -> tuple[str, dict[str, int]]:
    """``"count,train=1000,size=32"`` -> ``("count", {...DEFAULTS, train: 1000, size: 32})``;
    ValueError naming what is wrong and what is allowed."""
    task, *pairs = arg.split(",")
    if task not in TASKS:
        raise ValueError(f"scenes task {task!r}: allowed: {', '.join(TASKS)} (scenes:count or scenes:dist)")
    options = dict(DEFAULTS)
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in DEFAULTS or not value.isdigit():
            raise ValueError(f"scenes option {pair!r}: allowed: {', '.join(f'{k}=N' for k in DEFAULTS)}")
        options[key] = int(value)
    if options["size"] < 16 or options["train"] < 1 or options["test"] < 1:
        raise ValueError(f"scenes options {arg!r}: size must be at least 16, train and test at least 1")
    return task, options


def cache_dir() -> Path:
    return cache_root() / "scenes"


def load_scenes(arg: str, train: bool = True, folder: Path | None = None) -> TensorImageDataset:
    """The train or test split of ``scenes:ARG``, rendered once and then read from the cache."""
    from safetensors.torch import load_file, save_file

    task, opt = parse_options(arg)
    split = "train" if train else "test"
    seed = 2 * opt["seed"] + (0 if train else 1)
    name = f"v{VERSION}-seed{opt['seed']}-{split}-{opt[split]}-{opt['size']}px.safetensors"
    path = (folder or cache_dir()) / name
    if path.is_file():
        data = load_file(path)
    else:
        data = render_split(opt[split], opt["size"], seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(data, str(tmp)))
    classes = [str(k) for k in range(MIN_OBJECTS, SLOTS + 1)] if task == "count" else \
        [f"bin{k}" for k in range(len(DIST_EDGES) + 1)]
    return TensorImageDataset(data["images"], data[task], classes, (0.5,) * 3, (0.25,) * 3)
