"""``recipe: auto``: the settings a run does not fix itself, chosen from its data.

The paper's recipe is for 1.3 million 224-pixel colour images and hundreds of GPU-hours;
the demo's was searched on 60,000 28-pixel grey ones and 9 CPU minutes. Neither fits a
folder of 1,400 images: trained as the demo is, their features fell below the same ViT at
random initialisation. With ``recipe: auto`` every key below that the config file and the
``--set`` overrides leave unset is chosen from what the data is (how many images, how large,
grey or colour); an explicit setting always wins. The rules, each measured on Fashion-MNIST
subsets and checked on data the search never saw (``benchmarks/README.md``, "Recipe for your
data"):

- the input: channels as the images have them; a patch grid of about 7 to 14 per side
  (4-pixel patches up to 40 pixels, 8 up to 96, 16 above), the image size a multiple of it;
- the model: ViT-S width (384) under ``FEW_IMAGES`` images, ViT-T width (192) above; 4 blocks
  on small images (the demo's), the arch's depth on larger; a narrow predictor (96 wide, 2
  blocks). On 1,000 Fashion-MNIST images the wider encoder, at half the steps in the same 5
  minutes, beat the narrow one by 2 points (and raw pixels, which the narrow one did not);
  on 5,000 the narrow one's extra steps were worth more;
- the optimisation: many small steps (batch 32, lr 2e-4, warm-up 1/8 of the schedule), L2
  loss, EMA 0.996 -> 0.999, and the term against collapse (``optim.anti_collapse: vc``),
  which kept the features spread on every small dataset tried;
- the length: at most ``PASSES_CAP`` passes over small data, and at least 6 over large data
  (a time budget, ``train.budget_minutes``, usually decides first).

Above ``LARGE_DATA`` images (and on larger images) the rules keep the same recipe but nothing
here was measured at that scale: set the model and batch yourself for an ImageNet-sized run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config, validate
from ..data.facts import DataFacts, data_facts
from ..models.vit import ARCHS

PASSES_CAP = 300  # most passes over a small dataset (images seen: about 360,000 at most)
IMAGES_SEEN = 360_000  # the demo's 6 passes over 60,000 images
LARGE_DATA = 100_000
FEW_IMAGES = 2_500  # below: a wider encoder (many passes over each image in any budget)


@dataclass(frozen=True)
class Choice:
    key: str  # "section.name"
    value: Any
    why: str


def patch_for(size: int) -> int:
    """The patch side for images of ``size`` pixels: a grid of about 7 to 14 per side."""
    return 4 if size <= 40 else 8 if size <= 96 else 16


def auto_choices(facts: DataFacts, cfg: Config | None = None) -> list[Choice]:
    """Every value ``recipe: auto`` would choose for data described by ``facts`` (given the
    values ``cfg`` sets explicitly, which some choices depend on: the probes' layers on the depth)."""
    patch = patch_for(min(facts.size, 224))
    size = max(2 * patch, min(facts.size, 224) // patch * patch)
    small_images = size <= 64
    passes = max(6.0, min(PASSES_CAP, IMAGES_SEEN / facts.images))
    depth = 4 if small_images else None
    if cfg is not None and "model.depth" in cfg.explicit:
        depth = cfg.model.depth
    if cfg is not None and "model.arch" in cfg.explicit and depth is None:
        depth = ARCHS[cfg.model.arch].depth
    return [
        Choice("model.in_chans", facts.channels, "the images' channels"),
        Choice("model.img_size", size, "the images' size, a multiple of the patch"),
        Choice("model.patch_size", patch, f"a {size // patch}x{size // patch} grid"),
        Choice("model.arch", *(("vit_small", "width 384 for few images") if facts.images < FEW_IMAGES
                               else ("vit_tiny", "width 192"))),
        Choice("model.depth", 4 if small_images else None, "4 blocks on small images"),
        Choice("model.pred_depth", 2, "a narrow predictor"),
        Choice("model.pred_dim", 96, "a narrow predictor"),
        Choice("model.pred_heads", 3, "a narrow predictor"),
        Choice("mask.min_keep", 4, "few patches per image"),
        Choice("data.batch_size", 32, "many small steps"),
        Choice("optim.lr", 2e-4, "for batch 32"),
        Choice("optim.start_lr", 1e-4, "for batch 32"),
        Choice("optim.epochs", round(passes, 2), f"at most {IMAGES_SEEN:,} images seen, {PASSES_CAP} passes"),
        Choice("optim.warmup_epochs", round(passes / 8, 3), "1/8 of the schedule"),
        Choice("optim.ema", (0.996, 0.999), "a target that keeps moving in a short run"),
        Choice("optim.loss", "l2", "measured better than smooth-L1 in short runs"),
        Choice("optim.anti_collapse", "vc", "keeps the features spread on small data"),
        Choice("optim.anti_collapse_weight", 1.0, "the term against collapse"),
        Choice("eval.last_layers", min(4, depth or ARCHS["vit_tiny"].depth), "probes read the last 4 blocks"),
    ]


def apply_recipe(cfg: Config, facts: DataFacts) -> list[Choice]:
    """Set every value of :func:`auto_choices` that ``cfg`` does not set explicitly (in
    place); returns the choices made. Nothing changes unless ``cfg.recipe == "auto"``."""
    if cfg.recipe != "auto":
        return []
    made = [c for c in auto_choices(facts, cfg) if c.key not in cfg.explicit]
    for choice in made:
        section, name = choice.key.split(".")
        setattr(getattr(cfg, section), name, choice.value)
    validate(cfg)
    return made


@dataclass(frozen=True)
class Resolved:
    """What ``recipe: auto`` saw and chose for a run; ``line`` is the start-up line."""

    facts: DataFacts
    made: tuple[Choice, ...]
    kept: tuple[str, ...]  # keys of the recipe the config set explicitly

    @property
    def line(self) -> str:
        values = ", ".join(f"{c.key}={_show(c.value)}" for c in self.made) or "nothing (all set)"
        kept = f"; as set: {', '.join(self.kept)}" if self.kept else ""
        return f"recipe auto for {self.facts.describe()}: {values}{kept}"


def resolve_recipe(cfg: Config, dataset=None) -> Resolved | None:
    """Apply ``recipe: auto`` to ``cfg`` in place, once (later calls return the first
    result); ``dataset``: the raw training set, read from ``data.dataset`` when None.
    None when the config has no recipe."""
    if cfg.recipe != "auto":
        return None
    if cfg.resolved is not None:
        return cfg.resolved
    if dataset is None:
        from ..data import build_dataset, check_data_path

        check_data_path(cfg.data.dataset)  # a missing folder: a config error, not a traceback
        dataset = build_dataset(cfg.data.dataset, train=True)
    facts = data_facts(dataset)
    kept = tuple(c.key for c in auto_choices(facts, cfg) if c.key in cfg.explicit)
    cfg.resolved = Resolved(facts, tuple(apply_recipe(cfg, facts)), kept)
    return cfg.resolved


def _show(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
