"""Training the pixel decoder on a checkpoint's frozen target features, and scoring it.

The decoder learns, on training images, to turn the layer-normed target-encoder features of
a target block (what the predictor is trained to predict) into that block's pixels. The
blocks are drawn by the checkpoint's own mask sampler, every random choice from
``(seed, step)``, so ``--resume`` continues exactly. The encoder is never changed.

:func:`score` then compares, on held-out images and inside the target blocks, the pixel
error (normalised pixels, mean squared) of the decoder applied to (a) the target features,
(b) the predictor's outputs from the context block alone, (c) the outputs of the same
architecture at random initialisation, and (d) the mean training image; and the spread
(mean squared difference) between two samples of (b).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import checkpoint as ckpt
from ..data import EvalTransform, build_dataset, images_at
from ..inference import optimize
from ..interop.bundle import ModelBundle
from ..masking import Masks, MaskSettings, MultiBlockMaskSampler
from ..models import Encoder, Predictor, gather_tokens
from ..models.layers import patchify
from ..runtime import autocast, resolve_precision
from ..utils.seeds import mix_seed
from .model import PixelDecoder
from .store import load_decoder, save_decoder

STEP_STREAM, SCORE_STREAM = 0xDEC0, 0xDEC1
WARMUP_STEPS = 100
CPU = torch.device("cpu")  # the decoder is small: it trains and samples on the CPU


@dataclass
class Source:
    """What the decoder decodes: a checkpoint's encoders, predictor and masks."""

    path: str
    target: Encoder
    context: Encoder
    predictor: Predictor
    transform: EvalTransform
    sampler: MultiBlockMaskSampler
    architecture: ModelBundle  # the specs as read, weights dropped: the same models afresh
    # The encoders run in bf16 where the CPU has bf16 units (as in pretraining), else fp32.
    precision: str = field(default_factory=lambda: resolve_precision("auto", CPU))

    @property
    def patch_size(self) -> int:
        return self.target.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.target.grid

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Layer-normed target features ``(B, N, D)``: the predictor's targets."""
        with autocast(CPU, self.precision):
            h = self.target(images).float()
        return F.layer_norm(h, h.shape[-1:])

    def predictions(self, images: torch.Tensor, masks: Masks, context=None, predictor=None) -> torch.Tensor:
        """The predictor's outputs ``(B, T, Kt, D)`` from the context block alone."""
        context, predictor = context or self.context, predictor or self.predictor
        with autocast(CPU, self.precision):
            return predictor(context(images, keep=masks.context), masks.context, masks.targets).float()


def load_source(path: str | Path) -> Source:
    """Encoders, predictor and the mask sampler of anything with a predictor: an imagejepa
    run or checkpoint (its own mask settings; also as ``hf-hub:ORG/NAME``) or an official
    ``.pth.tar`` (the paper's)."""
    from ..interop.convert import read_model
    from ..interop.hub import hub_folder, is_hub_name

    local = hub_folder(str(path)) if is_hub_name(path) else path
    bundle = read_model(local)
    predictor = bundle.build_predictor()
    settings = MaskSettings()
    try:
        folder = ckpt.resolve_checkpoint(local, verify=False)
    except FileNotFoundError:
        folder = None
    if folder is not None and (folder / ckpt.META_FILE).is_file():
        from ..config import from_dict, mask_settings

        settings = mask_settings(from_dict(ckpt.load_meta(folder)["config"]))
    pre = bundle.preprocess()
    target, context = (optimize(bundle.build_encoder(which)) for which in ("target", "context"))
    return Source(str(path), target, context, predictor,
                  EvalTransform(pre.size, pre.in_chans, pre.mean, pre.std),
                  MultiBlockMaskSampler(bundle.grid(), settings), replace(bundle, states={}))


def _blocks(source: Source, images: torch.Tensor, masks: Masks, features: torch.Tensor | None = None):
    """``(pixels (B*T, Kt, P), features (B*T, Kt, D), positions (B*T, Kt))`` of the target blocks."""
    pixels = gather_tokens(patchify(images, source.patch_size), masks.targets).flatten(0, 1)
    if features is None:
        features = gather_tokens(source.features(images), masks.targets)
    return pixels, features.flatten(0, 1), masks.targets.flatten(0, 1)


def train_decoder(checkpoint: str | Path, data: str, out_dir: str | Path, steps: int = 10000,
                  batch_size: int = 64, lr: float = 1e-3, seed: int = 0, save_every: int = 1000,
                  width: int = 128, depth: int = 3, log=print) -> Path:
    """Train (or continue training) the decoder in ``out_dir``; returns its last checkpoint."""
    out_dir = Path(out_dir)
    source = load_source(checkpoint)
    dataset = build_dataset(data, train=True)
    about = {"source": str(checkpoint), "data": data, "steps": steps, "batch_size": batch_size, "lr": lr,
             "seed": seed, "mean": source.transform.mean, "std": source.transform.std}
    start = 0
    if ckpt.latest_checkpoint(out_dir) is not None:
        decoder, meta, state = load_decoder(out_dir, optimizer_for=True)
        decoder.train()
        changed = [k for k in ("source", "data", "batch_size", "lr", "seed") if meta.get(k) != about[k]]
        if changed:
            from ..errors import UsageError

            raise UsageError(f"{out_dir} holds a decoder trained with other {', '.join(changed)}; "
                             "use another --out, or the same settings to continue it")
        optimizer = _optimizer(decoder, lr)
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        log(f"imagejepa decoder: continuing {out_dir} from step {start}")
    else:
        torch.manual_seed(seed)
        decoder = PixelDecoder(source.target.embed_dim, source.patch_size, source.transform.in_chans,
                               source.grid, width=width, depth=depth)
        optimizer = _optimizer(decoder, lr)
    arch = f"{source.architecture.encoder_spec['arch']}/{source.patch_size}"
    millions = sum(p.numel() for p in decoder.parameters()) / 1e6
    log(f"imagejepa decoder: {arch} target features of {checkpoint} -> pixels, {millions:.2f}M parameters, "
        f"steps {start} -> "
        f"{steps} of {batch_size} images")
    path, began = None, time.perf_counter()
    for step in range(start, steps):
        g = torch.Generator().manual_seed(mix_seed(seed, step, STEP_STREAM))
        indices = torch.randint(len(dataset), (batch_size,), generator=g)
        images = images_at(dataset, indices, source.transform)
        masks = source.sampler(batch_size, g)
        with torch.no_grad():
            pixels, features, positions = _blocks(source, images, masks)
        for group in optimizer.param_groups:  # warm-up, then constant: more --steps continue it
            group["lr"] = lr * min(1.0, (step + 1) / WARMUP_STEPS)
        loss = decoder.loss(pixels, features, positions, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % save_every == 0 or done == steps:
            path = save_decoder(out_dir, done, decoder, optimizer, about)
            log(f"imagejepa decoder: step {done}: loss {loss.item():.4f}, "
                f"{(done - start) / (time.perf_counter() - began):.1f} steps/s, saved {path}")
    return path or ckpt.resolve_checkpoint(out_dir)


def _optimizer(decoder: PixelDecoder, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.01)


@torch.no_grad()
def score(decoder: PixelDecoder, checkpoint: str | Path, data: str, images: int = 256, seed: int = 0,
          sample_steps: int = 16) -> dict:
    """Pixel errors inside the target blocks of ``images`` held-out images: (a) decoded target
    features, (b) decoded predictions, (c) decoded predictions at random initialisation,
    (d) the mean training image; and the spread between two samples of (b)."""
    source = load_source(checkpoint)
    test = build_dataset(data, train=False)
    count = min(images, len(test))
    x = images_at(test, torch.arange(count), source.transform)
    g = torch.Generator().manual_seed(mix_seed(seed, 0, SCORE_STREAM))
    masks = source.sampler(count, g)
    pixels, _, positions = _blocks(source, x, masks)
    target_features = gather_tokens(source.features(x), masks.targets)
    torch.manual_seed(seed)  # the random-initialisation model, the same architecture
    random_context = Encoder.from_spec(source.architecture.encoder_spec).eval()
    random_predictor = source.architecture.new_predictor().eval()
    train = build_dataset(data, train=True)
    mean_image = images_at(train, torch.arange(min(2000, len(train))), source.transform).mean(0, keepdim=True)
    mean_pixels = gather_tokens(patchify(mean_image.expand(count, -1, -1, -1), source.patch_size),
                                masks.targets).flatten(0, 1)

    def decoded(features: torch.Tensor, sample_seed: int) -> torch.Tensor:
        return decoder.sample(features.flatten(0, 1), positions, sample_steps,
                              torch.Generator().manual_seed(sample_seed))

    def error(estimate: torch.Tensor) -> float:
        return round(F.mse_loss(estimate, pixels).item(), 4)

    predicted = source.predictions(x, masks)
    random_predicted = source.predictions(x, masks, random_context, random_predictor)
    first, second = decoded(predicted, 1), decoded(predicted, 2)
    return {
        "images": count, "blocks": int(positions.shape[0]),
        "error_target_features": error(decoded(target_features, 1)),
        "error_predictor": error(first),
        "error_random_init": error(decoded(random_predicted, 1)),
        "error_mean_image": error(mean_pixels),
        "sample_spread": round(F.mse_loss(first, second).item(), 4),
    }


def score_line(decoder_dir: str | Path, data: str, images: int = 256) -> str:
    """The JSON line ``decoder train`` prints: the scores of the decoder in ``decoder_dir``."""
    decoder, meta, _ = load_decoder(decoder_dir)
    return json.dumps({"decoder": str(decoder_dir), "source": meta["source"], "data": data,
                       "step": meta["step"], **score(decoder, meta["source"], data, images)})
