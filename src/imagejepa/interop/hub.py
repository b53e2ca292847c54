"""``hf-hub:ORG/NAME[@REVISION]``: a Hugging Face Hub model, wherever a checkpoint is named.

The name becomes the local folder of that model's snapshot (``config.json``,
``model.safetensors``, ``preprocessor_config.json``), read as any Hugging Face I-JEPA folder.
With ``HF_HUB_OFFLINE`` set it is taken from the local cache (``HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``) and nothing is downloaded; otherwise ``huggingface_hub``
downloads it into that cache. ``huggingface_hub`` is an optional dependency
(``pip install 'imagejepa[hub]'``).

The official encoders are on the Hub as ``facebook/ijepa_vith14_1k`` and others (see
:data:`imagejepa.interop.registry.RELEASES`, ``hub``); their preprocessor config carries the
0.5/0.5 normalisation of ``ViTImageProcessor``, and the reader applies ImageNet's instead,
the one I-JEPA was trained with.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MissingDependencyError, UsageError

PREFIX = "hf-hub:"
FILES = ["*.json", "*.safetensors"]  # what an I-JEPA folder needs (no PyTorch pickles)


def is_hub_name(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse_hub_name(source: str) -> tuple[str, str | None]:
    """``"hf-hub:org/name@rev"`` -> ``("org/name", "rev")`` (``None``: the default branch)."""
    repo, _, revision = source[len(PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UsageError(f"{source}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo, revision or None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_folder(source: str) -> Path:
    """The local snapshot folder of ``hf-hub:ORG/NAME[@REVISION]`` (downloaded unless offline)."""
    repo, revision = parse_hub_name(source)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise MissingDependencyError(f"{source}: reading a Hub model needs huggingface_hub; "
                                     "pip install 'imagejepa[hub]' (or huggingface_hub)") from None
    cache = os.environ.get("HF_HUB_CACHE") or None  # read now, not when huggingface_hub was imported
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=offline(),
                                      allow_patterns=FILES))
    except LocalEntryNotFoundError:
        where = cache or "the Hugging Face cache (HF_HUB_CACHE, by default ~/.cache/huggingface/hub)"
        if offline():
            raise UsageError(f"{source}: not in {where}, and HF_HUB_OFFLINE is set; unset it to download "
                             "it, or download it where the network is reachable") from None
        raise UsageError(f"{source}: could not be downloaded (no connection?) and is not in "
                         f"{where}") from None
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{source}: {first}") from None
