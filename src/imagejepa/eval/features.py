"""Frozen-backbone features: average-pooled (or all) patch tokens, cached on disk.

Four feature sources share one interface so every probe can run its baselines in the
same run: the checkpoint's ``target`` encoder (the paper's choice), its ``context``
encoder, the same architecture at ``random`` initialisation, and raw ``pixels``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import EvalTransform, eval_batches
from ..inference import optimize
from ..models import Encoder
from ..models.layers import patchify
from ..runtime import autocast
from ..utils.files import atomic_write, cache_root, sha256_of

SOURCES = ("target", "context", "random", "pixels")
CACHE_VERSION = 1  # bump when extraction changes, so old cache entries are not reused


@torch.no_grad()
def extract_features(
    encoder: Encoder,
    dataset,
    transform: EvalTransform,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int | None = None,
    last_layers: int = 1,
    patch_tokens: bool = False,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels (N,))`` for a whole dataset, in dataset order.

    Features are ``(N, k*D)`` float32 average-pooled patch tokens, or with
    ``patch_tokens`` every token, ``(N, T, k*D)`` float16 (half the memory; the values are
    layer-normed, well inside float16's range). With ``last_layers=k`` the last k blocks'
    outputs (each through the final norm) are concatenated, as in the paper's "last 4
    layers" evaluation.
    """
    if batch_size is None:
        # On CPU small batches stay in cache: 64 ran ~25% faster than 256 for the demo's ViT.
        batch_size = 256 if device.type == "cuda" else 64
    encoder = encoder.to(device).eval()
    feats, labels = [], []
    bar = tqdm(total=len(dataset), desc="features", unit="img", disable=not progress,
               mininterval=1.0, leave=False)
    for images, y in eval_batches(dataset, transform, batch_size):
        with autocast(device, precision):
            tokens = encoder(images.to(device), out_layers=last_layers)  # (k, B, T, D) or (B, T, D)
        if last_layers > 1:
            tokens = torch.cat(tokens.unbind(0), dim=-1)  # (B, T, k*D)
        out = tokens.half() if patch_tokens else tokens.float().mean(dim=1)
        feats.append(out.cpu())
        labels.append(torch.as_tensor(y))
        bar.update(len(images))
    bar.close()
    return torch.cat(feats), torch.cat(labels)


def pixel_features(dataset, transform: EvalTransform, patch_size: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw normalised pixels: ``(N, C*H*W)``, or with ``patch_size`` one token per patch,
    ``(N, T, C*p*p)`` (the attentive probe's baseline)."""
    xs, ys = [], []
    for images, y in eval_batches(dataset, transform, 1024):
        if patch_size:
            xs.append(patchify(images, patch_size).half())
        else:
            xs.append(images.flatten(1))
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys)


def default_cache_dir() -> Path:
    return cache_root() / "features"


class FeatureCache:
    """Features on disk as safetensors, one file per (weights, data, split, options) key."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else default_cache_dir()
        self.hits = self.misses = 0

    @staticmethod
    def key(parts: dict) -> str:
        text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def load(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            self.misses += 1
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # a damaged entry is recomputed, never trusted
            self.misses += 1
            return None
        self.hits += 1
        return tensors["features"], tensors["labels"]

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor, about: dict) -> None:
        """Atomic: written under a temporary name, then renamed into place."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {"features": features.contiguous(), "labels": labels.contiguous()}
        meta = {"about": json.dumps(about, sort_keys=True)}
        atomic_write(self.folder / f"{key}.safetensors",
                     lambda tmp: save_file(tensors, str(tmp), metadata=meta))


@dataclass(frozen=True)
class FeatureRequest:
    """What to extract: ``source`` in SOURCES, from the last k layers, pooled or per patch."""

    source: str = "target"
    last_layers: int = 1
    patch_tokens: bool = False

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"feature source must be one of {SOURCES}, got {self.source!r}")
        if self.last_layers < 1:
            raise ValueError(f"last_layers must be >= 1, got {self.last_layers}")


def identify_source(source) -> tuple[str, str, int]:
    """``(where, weights fingerprint, recipe's last_layers)`` of anything ``load_encoder``
    reads: an imagejepa run or checkpoint folder, an official ``.pth.tar``, a Hugging Face
    or timm folder or file, or a registry name (resolved to its local file)."""
    from .. import checkpoint as ckpt
    from ..config import from_dict
    from ..interop.hub import hub_folder, is_hub_name
    from ..interop.registry import RELEASES, get_release, locate

    if is_hub_name(source):  # its local snapshot folder, identified as any folder
        source = hub_folder(source)
    if str(source) in RELEASES:
        path = locate(get_release(str(source)))
        return str(path), sha256_of(path), 1
    path = Path(source)
    try:
        folder = ckpt.resolve_checkpoint(path)
    except FileNotFoundError:
        folder = None
    if folder is not None:  # ours: the manifest already holds the weights' sha256
        last_layers = from_dict(ckpt.load_meta(folder)["config"]).eval.last_layers
        return str(folder), ckpt.weights_digest(folder), last_layers
    if path.is_file():
        return str(path), sha256_of(path), 1
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f.name.encode() + sha256_of(f).encode())
        return str(path), digest.hexdigest(), 1
    raise FileNotFoundError(f"no checkpoint at {source}: not a run or checkpoint folder, a weights "
                            "file, a Hugging Face or timm folder, or a released checkpoint name")


class FeatureExtractor:
    """Features of one model on one dataset split, from any source, through a cache.

    ``extractor(request, split) -> (features, labels)`` with ``split`` ``"train"`` or ``"test"``.
    ``checkpoint`` is anything :func:`imagejepa.load_encoder` reads.
    """

    def __init__(self, checkpoint, data_spec: str, device=None, precision: str = "auto",
                 cache: FeatureCache | None = None, batch_size: int | None = None,
                 progress: bool = True):
        from ..data import build_dataset
        from ..runtime import resolve_device, resolve_precision

        self.checkpoint, self.weights_id, self.recipe_last_layers = identify_source(checkpoint)
        from ..interop.hub import is_hub_name

        # A Hub name is looked up once: from now on its snapshot folder stands for it.
        self.source = self.checkpoint if is_hub_name(checkpoint) else checkpoint
        self.data_spec = data_spec
        self.device = device or resolve_device("auto")
        self.precision = resolve_precision(precision, self.device)
        self.cache, self.batch_size, self.progress = cache, batch_size, progress
        self._build_dataset = build_dataset
        self._datasets, self._encoders = {}, {}

    def dataset(self, split: str):
        """The raw dataset of ``split`` ("train" or "test"), built on first use."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if split not in self._datasets:
            self._datasets[split] = self._build_dataset(self.data_spec, train=split == "train")
        return self._datasets[split]

    def encoder(self, source: str) -> tuple[Encoder, EvalTransform]:
        """The encoder behind ``source`` (built once) and the preprocessing it expects."""
        if source not in self._encoders:
            from ..interop.loading import load_encoder

            which = "context" if source == "context" else "target"
            encoder, pre = load_encoder(self.source, which=which)
            if source == "random":  # the same architecture, freshly initialised
                torch.manual_seed(0)
                encoder = Encoder.from_spec(encoder.spec()).eval().requires_grad_(False)
            transform = EvalTransform(pre.size, pre.in_chans, pre.mean, pre.std)
            self._encoders[source] = optimize(encoder), transform
        return self._encoders[source]

    def __call__(self, request: FeatureRequest, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = self.dataset(split)
        encoder, transform = self.encoder(request.source)
        if request.source == "pixels":  # cheap: never cached
            return pixel_features(dataset, transform, encoder.patch_size if request.patch_tokens else None)
        about = {"weights": self.weights_id, "data": self.data_spec, "split": split,
                 "images": len(dataset), "precision": self.precision, **asdict(request)}
        key = FeatureCache.key(about)
        if self.cache is not None and (hit := self.cache.load(key)) is not None:
            return hit
        features, labels = extract_features(
            encoder, dataset, transform, self.device, self.precision, self.batch_size,
            request.last_layers, request.patch_tokens, self.progress,
        )
        if self.cache is not None:
            self.cache.save(key, features, labels, about)
        return features, labels
