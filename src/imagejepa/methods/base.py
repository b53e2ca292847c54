"""The seam between the training loop and a self-supervised method.

A method is an ``nn.Module`` whose sub-networks are named in ``networks`` (what a checkpoint
holds, ``name.`` prefixed), and which says

- what its loader makes: :meth:`views` (a transform from a uint8 image and a generator to
  one view ``(C, S, S)`` or a tuple of view stacks) and :meth:`mask_sampler` (the masks the
  step draws for each global batch, or ``None``);
- the loss of a batch: ``forward(views, masks) -> (loss, metrics)``, ``metrics`` holding
  the scalars ``pred_loss``, ``target_std`` and ``pred_std``; its ``predicted`` and ``target``
  features ``(B, T, K, D)`` (``T = blocks``) go to :attr:`Method.tap`, for the monitor;
- the update after a step: :meth:`update_target` (exponential moving averages of the pairs
  in ``ema_pairs``; nothing for a method without a teacher);
- which network the probes read: ``evaluated``.

The trainer, its checkpoints, DDP and FSDP2 go through these names only.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from ..data.transforms import TrainTransform
from ..distributed import fill_from_whole, local_shard
from ..models.layers import initial_value
from ..utils.seeds import mix_seed

INIT_STREAM = 0x1A17


class FeatureTap:
    """What the monitor sees of a step, outside what ``forward`` returns: a method's forward
    calls :meth:`keep` with its ``predicted`` and ``target`` features ``(B, T, K, D)``; the
    trainer takes them (:meth:`take`) after each forward (its monitor uses them on the steps it
    watches). Kept unconditionally (detached references, no copy), so that a compiled forward
    has no branch on it and no second graph."""

    def __init__(self):
        self.features: tuple[torch.Tensor, torch.Tensor] | None = None

    def keep(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self.features = (predicted.detach(), target.detach())

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The features of the last forward (``None`` if none since the last take); dropped here."""
        features, self.features = self.features, None
        return features


class Method(nn.Module):
    name: str = ""
    networks: tuple[str, ...] = ()  # every sub-network a checkpoint holds
    trained: tuple[str, ...] = ()  # those the optimiser updates
    ema_pairs: tuple[tuple[str, str], ...] = ()  # (follower, followed) moved by the EMA
    evaluated: str = "encoder"  # the network the probes read
    blocks: int = 1  # T of the tapped ``predicted`` / ``target`` features (loss_block1..T columns)
    loss_name: str = "l2"  # how the monitor compares ``predicted`` with ``target``
    anti_collapse: str = "none"

    def __init__(self):
        super().__init__()
        self.tap = FeatureTap()

    @property
    def evaluated_encoder(self) -> nn.Module:
        return getattr(self, self.evaluated)

    def trained_networks(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.trained]

    def views(self, size: int, in_chans: int, mean, std, crop_scale=(0.3, 1.0)):
        """The loader's transform: one random crop per image (I-JEPA's and MAE's)."""
        return TrainTransform(size, in_chans, mean, std, crop_scale)

    def mask_sampler(self):
        """``sampler(batch_size, generator) -> Masks`` for a global batch, or ``None``."""
        return None

    def begin_step(self, warmup_progress: float) -> None:
        """Told before each step how far the learning-rate warm-up is (0 to 1)."""

    @torch.no_grad()
    def initialise(self, seed: int) -> None:
        """Draw every parameter anew, each from its own generator seeded by ``seed`` and the
        parameter's name (``encoder.blocks.0.attn.qkv.weight``), on the CPU, then copy it where
        the parameter lives, whole or as this rank's shard: the same values whether the model
        was built whole or on the meta device, on one process or sharded over many. Each EMA
        follower then starts as a copy of the network it follows."""
        followers = {follower for follower, _ in self.ema_pairs}
        drawn = 0
        for network in (n for n in self.networks if n not in followers):
            for module_name, owner in getattr(self, network).named_modules(prefix=network):
                for name, param in owner.named_parameters(recurse=False):
                    stream = zlib.crc32(f"{module_name}.{name}".encode())
                    g = torch.Generator().manual_seed(mix_seed(seed, INIT_STREAM, stream))
                    fill_from_whole(param, initial_value(owner, name, param.shape, g))
                    drawn += 1
        for follower, followed in self.ema_pairs:
            for target, online in zip(getattr(self, follower).parameters(),
                                      getattr(self, followed).parameters(), strict=True):
                local_shard(target).copy_(local_shard(online))
                drawn += 1
        if drawn != len(list(self.parameters())):
            raise AssertionError(f"initialise: {drawn} parameters drawn of {len(list(self.parameters()))}; "
                                 "a parameter lies outside the networks the method names")

    @torch.no_grad()
    def update_target(self, momentum: float, moving: torch.Tensor | None = None) -> None:
        """``follower = momentum * follower + (1 - momentum) * followed`` for each EMA pair
        (one foreach lerp).

        ``moving``: a boolean on the device; where false (a skipped step) nothing moves,
        decided without reading the flag back. Sharded by FSDP2, both networks of a pair are
        sharded alike, so each rank updates its own shards, with no communication."""
        if not self.ema_pairs:
            return
        target = [local_shard(p) for follower, _ in self.ema_pairs
                  for p in getattr(self, follower).parameters()]
        online = [local_shard(p) for _, followed in self.ema_pairs
                  for p in getattr(self, followed).parameters()]
        _lerp(target, online, momentum, moving)


@torch.no_grad()
def ema_update(follower: nn.Module, followed: nn.Module, momentum: float) -> None:
    """``follower = momentum * follower + (1 - momentum) * followed``, parameter by parameter
    (one foreach lerp): the target encoder's update after each optimiser step, for a loop of
    your own. The two modules must have the same parameters in the same order."""
    target, online = list(follower.parameters()), list(followed.parameters())
    if len(target) != len(online):
        raise ValueError(f"ema_update: the follower has {len(target)} parameters, the followed {len(online)}")
    _lerp([local_shard(p) for p in target], [local_shard(p) for p in online], momentum)


def _lerp(target: list[torch.Tensor], online: list[torch.Tensor], momentum: float,
          moving: torch.Tensor | None = None) -> None:
    if moving is None:
        torch._foreach_lerp_(target, online, 1.0 - momentum)
        return
    # One weight tensor per pair: given a single 0-dim tensor, foreach_lerp takes its
    # Scalar overload, which reads the weight back to the host.
    weight = moving.to(target[0].dtype) * (1.0 - momentum)
    torch._foreach_lerp_(target, online, [weight] * len(target))
