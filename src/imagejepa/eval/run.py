"""One entry point for every probe: features from each source, the probe, a report.

``evaluate("knn", checkpoint, "fashion-mnist", baselines=True)`` probes the target encoder
and, in the same run, raw pixels and the same architecture at random initialisation.
"""

from __future__ import annotations

import time

from ..errors import EvalError
from . import attentive, knn, linear, lowshot
from .features import FeatureCache, FeatureExtractor, FeatureRequest

# protocol -> (module with probe + summary, probe function name, needs patch tokens)
PROTOCOLS = {
    "linear": (linear, "linear_probe", False),
    "knn": (knn, "knn_probe", False),
    "lowshot": (lowshot, "lowshot_probe", False),
    "attentive": (attentive, "attentive_probe", True),
}
BASELINES = ("pixels", "random")


SOURCE_NAMES = {"target": "target encoder", "context": "context encoder",
                "random": "random init", "pixels": "raw pixels"}


def evaluate(protocol: str, checkpoint, data_spec: str, encoder: str = "target", baselines: bool = False,
             last_layers: int | None = None, cache: FeatureCache | None = None, device=None,
             progress: bool = True, **settings) -> dict:
    """Run ``protocol`` on the train -> test splits of ``data_spec``; returns the report dict.

    ``settings`` go to the probe (e.g. ``ks`` for kNN, ``shots``/``seeds`` for low-shot,
    ``batchnorm`` for linear). ``last_layers`` defaults to the checkpoint's recipe
    (``eval.last_layers`` of its config) for pooled features, and to 1 for the attentive
    probe's patch tokens.
    """
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if encoder not in ("target", "context"):
        raise EvalError(f"encoder must be 'target' or 'context', got {encoder!r}")
    module, probe_name, patch_tokens = PROTOCOLS[protocol]
    probe = getattr(module, probe_name)
    start = time.perf_counter()
    features = FeatureExtractor(checkpoint, data_spec, device=device, cache=cache, progress=progress)
    if last_layers is None:  # the recipe's choice is for pooled features; attentive reads the last layer
        last_layers = 1 if patch_tokens else features.recipe_last_layers
    depth = features.encoder(encoder)[0].depth
    if not 1 <= last_layers <= depth:
        raise EvalError(f"--last-layers must be within [1, the encoder's depth {depth}], got {last_layers}")
    if protocol == "attentive":
        settings.setdefault("bf16", features.precision == "bf16")
    results, summaries = {}, {}
    for source in (encoder, *BASELINES) if baselines else (encoder,):
        request = FeatureRequest(source, 1 if source == "pixels" else last_layers, patch_tokens)
        train_x, train_y = features(request, "train")
        test_x, test_y = features(request, "test")
        dev = features.device
        result = probe(train_x.to(dev), train_y.to(dev), test_x.to(dev), test_y.to(dev), **settings)
        results[source] = result
        summaries[SOURCE_NAMES[source]] = module.summary(result)
    return {
        "protocol": protocol,
        "checkpoint": str(features.checkpoint),
        "data": data_spec,
        "encoder": encoder,
        "last_layers": last_layers,
        "settings": {k: v if isinstance(v, (int, float, str, bool)) else list(v)
                     for k, v in settings.items()},
        "train_images": len(features.dataset("train")),
        "test_images": len(features.dataset("test")),
        "results": results,
        "summary": summaries,
        "cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses},
        "seconds": round(time.perf_counter() - start, 1),
    }

