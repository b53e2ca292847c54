"""What the trainer watches besides the loss (see :mod:`imagejepa.monitor`): the health
metrics' schedule, the collapse warnings, the online kNN, and the trackers with their
pictures. Rank 0 watches; with FSDP2 every rank runs the online kNN's forward passes (the
sharded target encoder gathers its weights from all of them), and rank 0 alone uses it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import Config
from ..data import EvalTransform
from ..distributed import SHARDED, Processes
from ..inference import optimize
from ..masking import Masks
from ..monitor import CollapseWatch, Thresholds, advice_for
from ..monitor.online_knn import OnlineKNN
from ..monitor.trackers import Trackers, check_trackers

PICTURE_IMAGES = 8  # images in the mask and feature pictures sent to the trackers


class RunWatch:
    """``health_due(step)``, ``knn_due(step, stop)``, ``knn(step) -> top-1``, ``observe(row)
    -> warnings``; ``start(run_dir, step)`` opens the trackers (rank 0), ``close()`` them."""

    def __init__(self, cfg: Config, dataset, mean, std, device: torch.device, precision: str,
                 processes: Processes):
        self.cfg, self.mean, self.std, self.processes = cfg, mean, std, processes
        check_trackers(cfg.monitor)  # a missing package fails now, not after the build
        self.trackers = Trackers.off()
        self.online_knn = None
        if processes.is_main or cfg.dist.strategy in SHARDED:  # sharded: every rank takes part
            transform = EvalTransform(cfg.model.img_size, cfg.model.in_chans, mean, std)
            self.online_knn = OnlineKNN.for_data(dataset, transform, cfg.monitor, cfg.train.seed, device,
                                                 precision, cfg.eval.last_layers)
        queries = len(self.online_knn.sets["queries"]) if self.online_knn is not None else None
        self.collapse = CollapseWatch(Thresholds.from_config(cfg), advice_of(cfg), queries)
        self.latest: dict[str, str] = {}  # the latest health and kNN values, for the progress bar

    def describe(self) -> str:
        """One line: what is watched, how often."""
        mon, parts = self.cfg.monitor, []
        parts.append(f"RankMe, cosine and loss per block every {mon.every} steps" if mon.every else
                     "health metrics off (monitor.every=0)")
        if self.online_knn is not None:
            sizes = {name: len(images) for name, images in self.online_knn.sets.items()}
            parts.append(f"online {mon.knn_k}-NN top-1 every {mon.knn_every} steps ({sizes['queries']} "
                         f"held-out training images against a bank of {sizes['bank']})")
        else:
            why = "monitor.knn_every=0" if mon.knn_every == 0 else "the data has no labels"
            parts.append(f"online kNN off ({why})")
        trackers = [name for name in ("tensorboard", "wandb") if getattr(mon, name)]
        if trackers:
            parts.append(" and ".join(trackers))
        return "; ".join(parts)

    def start(self, run_dir: Path, step: int) -> None:
        if self.processes.is_main:
            self.trackers = Trackers(self.cfg.monitor, run_dir, self.cfg.to_dict(), step)

    def close(self) -> None:
        self.trackers.close()

    def health_due(self, step: int) -> bool:
        every = self.cfg.monitor.every
        return self.processes.is_main and every > 0 and step % every == 0

    def knn_due(self, step: int, stop: int) -> bool:
        """Every ``monitor.knn_every`` steps and at the run's last step (the curve's end)."""
        every = self.cfg.monitor.knn_every
        return self.online_knn is not None and (step % every == 0 or step == stop - 1)

    def knn(self, encoder, step: int, sharded: bool) -> float:
        """kNN top-1 (%) of ``encoder`` (the target encoder) now, and its features' picture.
        Whole, it runs through the inference twin (the same weights, faster blocks); sharded,
        as it is (each forward gathers its weights from every rank)."""
        top1 = self.online_knn(encoder if sharded else optimize(encoder))
        if self.trackers.active and not sharded:  # sharded, every rank would have to run it
            self.trackers.image("features", step, self._features_picture(encoder))
        return top1

    def picture_masks(self, images: torch.Tensor, masks: Masks, grid, patch_size: int, step: int) -> None:
        """This rank's first images of the batch ``(b, C, H, W)``, with their context and targets."""
        if not self.trackers.active:
            return
        from ..monitor.pictures import draw_masks, tile, to_uint8_rgb

        n = min(PICTURE_IMAGES, images.shape[0])
        masks = Masks(masks.context[:n], masks.targets[:n])
        drawn = draw_masks(to_uint8_rgb(images[:n].cpu(), self.mean, self.std), masks, grid, patch_size)
        self.trackers.image("masks", step, tile(_enlarged(drawn), n))

    @torch.no_grad()
    def _features_picture(self, encoder) -> torch.Tensor:
        """The first held-out images over the PCA of their patch features: uint8 ``(3, H, W)``."""
        from ..monitor.pictures import pca_rgb, tile, to_uint8_rgb

        images = self.online_knn.sets["queries"].images[:PICTURE_IMAGES]
        normalised = self.online_knn.transform(images)
        device = next(encoder.parameters()).device
        training = encoder.training
        tokens = encoder.eval()(normalised.to(device)).float().cpu()  # (n, T, D)
        encoder.train(training)
        pca = F.interpolate(pca_rgb(tokens, encoder.grid), size=images.shape[-2:], mode="nearest")
        rgb = to_uint8_rgb(normalised, self.mean, self.std)
        both = torch.cat([rgb, (pca * 255).round().to(torch.uint8)])
        return tile(_enlarged(both), len(images))

    def observe(self, row: dict) -> list[str]:
        """A step's metrics: to the trackers (log steps and watched steps), into the bar's
        values; returns the warnings they raise."""
        watched = "rankme" in row or "knn_top1" in row
        if watched or row["step"] % self.cfg.train.log_every == 0:
            self.trackers.scalars(row)
        if "rankme" in row:
            self.latest["rankme"] = f"{row['rankme']:.1f}"
        if "knn_top1" in row:
            self.latest["knn"] = f"{row['knn_top1']:.1f}"
        return self.collapse.update(row)


def advice_of(cfg: Config) -> str:
    """What the collapse warnings advise, given the run's term against collapse and whether
    the recipe chose it."""
    o = cfg.optim
    by_recipe = cfg.recipe == "auto" and "optim.anti_collapse" not in cfg.explicit
    return advice_for(o.anti_collapse, o.anti_collapse_weight, by_recipe)


def _enlarged(images: torch.Tensor, least: int = 128) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` scaled up by a whole factor (nearest) to at least ``least``
    pixels high, so that a 28-pixel image is visible in a tracker."""
    factor = -(-least // images.shape[-2])
    if factor <= 1:
        return images
    return F.interpolate(images, scale_factor=factor, mode="nearest")
