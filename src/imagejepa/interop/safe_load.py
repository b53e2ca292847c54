"""Read checkpoint files without running code from them.

Every file another program wrote goes through :func:`load_torch_file` (``torch.load``
with ``weights_only=True``: tensors, numbers, strings and plain containers only) or
safetensors. A file that needs arbitrary unpickling is refused with the reason, and a
truncated or foreign file gets a message that says so instead of a bare stack trace.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UnreadableFileError, UnsafeFileError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_MAGIC = b"\x80"  # the legacy format and raw pickles start with a PROTO opcode




def _refusal(path: Path, error: Exception) -> UnsafeFileError:
    text = str(error)
    found = re.search(r"(GLOBAL \S+)", text)
    opcode = re.search(r"Unsupported operand (\d+)", text)
    what = ""
    if found:
        what = f" (it asks for {found.group(1)})"
    elif opcode:
        what = f" (it uses pickle opcode {opcode.group(1)}, which a tensor-only file never needs)"
    return UnsafeFileError(
        f"refusing to load {path}: it holds pickled objects other than tensors and plain "
        f"containers{what}; unpickling them could run arbitrary code, so nothing from it was "
        "executed. imagejepa reads only torch.load(weights_only=True) files and safetensors; "
        "if the file comes from a source you trust, re-save its tensors in one of those forms"
    )


def load_torch_file(path: str | Path) -> Any:
    """The object a ``torch.save`` file holds, loaded safely on the CPU.

    Zip-format files are memory-mapped (a multi-GB official checkpoint is not read into
    memory at once). Raises :class:`UnsafeFileError` for code-running pickles,
    :class:`UnreadableFileError` for truncated or unrecognised files, ``FileNotFoundError``
    for a missing one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise UnreadableFileError(f"{path} is empty (0 bytes); the download or copy did not complete")
    if head == ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            raise UnreadableFileError(
                f"{path} is truncated: a zip-format PyTorch file without its end (central "
                f"directory), {path.stat().st_size} bytes; download or copy it again"
            )
        mmap = True
    elif head[:1] == PICKLE_MAGIC:
        mmap = False  # the legacy format cannot be memory-mapped
    else:
        raise UnreadableFileError(
            f"{path} is not a PyTorch checkpoint (starts with {head!r}; expected a torch.save "
            "zip archive or a legacy pickle)"
        )
    try:
        with warnings.catch_warnings():  # a refusal below says all there is to say; keep it one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise _refusal(path, e) from None
        raise UnreadableFileError(f"{path} is corrupt or truncated: {e}") from None
    except (EOFError, RuntimeError, OSError, KeyError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnreadableFileError(
            f"{path} could not be read as a PyTorch checkpoint ({detail}); it is probably "
            "truncated or corrupt: download or copy it again"
        ) from None


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from ``.safetensors`` or a safe ``torch.load`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise UnreadableFileError(f"{path} is not a readable safetensors file ({e})") from None
    obj = load_torch_file(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a common wrapper
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnreadableFileError(f"{path} does not hold a flat dict of tensors (a state dict)")
    return obj
