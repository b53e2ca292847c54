"""Atomic, verified checkpoints and safe loading.

A checkpoint is a folder ``checkpoints/step_00000020/`` holding

- ``model.safetensors``: the method's networks, prefixed by their names (I-JEPA's
  ``encoder.``, ``target_encoder.``, ``predictor.``; MAE's ``decoder.``, DINO's ``head.`` and
  ``target_head.`` beside its encoders), loadable without unpickling anything;
- ``train_state.pt``: optimiser state, step and RNG states; tensors and plain types only,
  read back with ``torch.load(weights_only=True)``;
- ``meta.json``: step, epoch, the resolved config, architecture and normalisation;
- ``manifest.json``: size and sha256 of each of the files above, written last.

A run sharded by FSDP2 or HSDP writes a **sharded** checkpoint instead: ``shards/`` in
``torch.distributed.checkpoint``'s layout (one file per rank, with the networks' weights and
the optimiser state, plus ``.metadata``) in place of ``model.safetensors``, each rank writing
only its own shards; ``train_state.pt`` then holds the step, RNG state and time only. The
manifest lists every file, each rank's hashed by that rank. The same atomic protocol holds;
:func:`load_tensors` reads the weights whole on one process (``eval``, ``embed``, ``convert``).

The folder is written under a temporary name, flushed to disk and renamed into place;
then the ``latest`` file (the folder's name) is replaced atomically. A crash at any moment
leaves the previous complete checkpoint and a ``latest`` that names a complete one.
Loading verifies the manifest; a checkpoint that fails is reported by file name, and an
older complete one is used instead only when the caller asks for it (``fallback=True``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .utils.files import atomic_write_text, fsync_dir, fsync_file, sha256_of

MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "train_state.pt", "meta.json"
MANIFEST, LATEST = "manifest.json", "latest"
SHARDS = "shards"  # a sharded checkpoint's torch.distributed.checkpoint folder
SHARDS_METADATA = f"{SHARDS}/.metadata"
DATA_FILES = (MODEL_FILE, STATE_FILE, META_FILE)
PLAIN_TYPES = (bool, int, float, str, type(None), torch.Tensor)


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def check_plain(obj: Any, where: str = "train_state") -> None:
    """Refuse anything but tensors, numbers, strings, None, lists, tuples and dicts: those are
    exactly what ``torch.load(weights_only=True)`` reads back without running code."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_plain(k, f"{where} key")
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN_TYPES):
        raise TypeError(f"{where}: {type(obj).__name__} is not a tensor or plain type")


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int | None = None,
    keep_every: int | None = None,
) -> Path:
    """Write one checkpoint atomically and point ``latest`` at it; returns its folder.

    Retention: the ``keep_last`` newest checkpoints are kept, and also every one whose step
    is a multiple of ``keep_every``. On any error (disk full included) the temporary folder
    is removed, the previous checkpoints and ``latest`` are untouched, and the error is raised.
    """
    check_plain(train_state)
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    tmp = new_temporary_folder(checkpoints_dir, step)

    def write() -> None:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / MODEL_FILE))
        torch.save(train_state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        for name in DATA_FILES:
            fsync_file(tmp / name)
        write_manifest(tmp, step, DATA_FILES)

    return _put_in_place(tmp, step, write, keep_last, keep_every)


def _put_in_place(tmp: Path, step: int, write, keep_last: int | None, keep_every: int | None) -> Path:
    """``write()`` the checkpoint of ``step`` into the temporary folder ``tmp``, flush it,
    rename it into place (a re-save of the same step moves the old one aside first, and back
    on failure), point ``latest`` at it and prune; on any error ``tmp`` is removed and the
    previous checkpoints and ``latest`` are untouched."""
    checkpoints_dir, final = tmp.parent, tmp.parent / checkpoint_name(step)
    replaced = None
    try:
        write()
        fsync_dir(tmp)
        if final.exists():
            replaced = checkpoints_dir / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, replaced)
        os.rename(tmp, final)
        fsync_dir(checkpoints_dir)
        _point_latest(checkpoints_dir, final.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if replaced is not None and not final.exists():
            os.rename(replaced, final)
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    if keep_last:
        prune(checkpoints_dir, keep_last, keep_every, keep=final.name)
    return final


def new_temporary_folder(checkpoints_dir: Path, step: int) -> Path:
    """Where a checkpoint of ``step`` is written before it is renamed into place."""
    return Path(checkpoints_dir) / f".tmp-{checkpoint_name(step)}-{uuid.uuid4().hex[:8]}"


def file_entries(folder: Path, names) -> dict[str, dict]:
    """``{name: {size, sha256}}`` of ``names`` in ``folder`` (a manifest's entries)."""
    return {name: {"size": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)}
            for name in names}


def finish_sharded_checkpoint(tmp: Path, step: int, shard_entries: dict[str, dict], train_state: dict,
                              meta: dict, keep_last: int | None = None,
                              keep_every: int | None = None) -> Path:
    """Complete a sharded checkpoint whose ranks have written ``tmp/shards`` (and hashed their
    files: ``shard_entries``): the train state, meta and manifest, then the rename into place
    and ``latest``, as :func:`save_checkpoint`. Rank 0 alone calls it."""
    check_plain(train_state)

    def write() -> None:
        torch.save(train_state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        for name in (STATE_FILE, META_FILE):
            fsync_file(tmp / name)
        write_manifest(tmp, step, (STATE_FILE, META_FILE), shard_entries)
        fsync_dir(tmp / SHARDS)

    return _put_in_place(tmp, step, write, keep_last, keep_every)


def is_sharded_checkpoint(folder: Path) -> bool:
    return (Path(folder) / SHARDS_METADATA).is_file()


def _point_latest(checkpoints_dir: Path, name: str) -> None:
    atomic_write_text(checkpoints_dir / LATEST, name + "\n")


def _step_of(folder: Path) -> int:
    return int(folder.name.split("_", 1)[1])


def complete_folders(checkpoints_dir: Path) -> list[Path]:
    """Checkpoint folders (``step_*``, renamed into place) in step order, oldest first."""
    found = [p for p in Path(checkpoints_dir).glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=_step_of)


def prune(checkpoints_dir: Path, keep_last: int, keep_every: int | None = None, keep: str = "") -> None:
    """Delete all but the ``keep_last`` newest checkpoints and those at multiples of
    ``keep_every``; never ``keep`` nor the one ``latest`` names. Each folder is first renamed
    out of the ``step_*`` namespace, so a crash mid-delete never leaves a half-deleted
    folder that looks like a checkpoint."""
    pointer = Path(checkpoints_dir) / LATEST
    current = pointer.read_text().strip() if pointer.is_file() else ""
    for old in complete_folders(checkpoints_dir)[:-keep_last]:
        if old.name in (keep, current) or (keep_every and _step_of(old) % keep_every == 0):
            continue
        doomed = old.with_name(f".del-{old.name}-{uuid.uuid4().hex[:8]}")
        os.rename(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def recover(checkpoints_dir: Path) -> list[str]:
    """Tidy what a killed save or prune left behind; returns the names removed or restored.

    ``.tmp-*`` (an unfinished save) and ``.del-*`` (an unfinished delete) are removed; an
    ``.old-step_N-*`` whose ``step_N`` is missing (killed between the two renames of a
    re-save) is renamed back. Only one process writes a run's checkpoints, so nothing
    found here is in use.
    """
    d = Path(checkpoints_dir)
    if not d.is_dir():
        return []
    done = []
    for p in sorted(d.glob(".old-step_*")):
        name = p.name[len(".old-"):].rsplit("-", 1)[0]
        if not (d / name).exists():
            os.rename(p, d / name)
        else:
            shutil.rmtree(p, ignore_errors=True)
        done.append(p.name)
    for p in sorted([*d.glob(".tmp-*"), *d.glob(".del-*")]):
        shutil.rmtree(p, ignore_errors=True)
        done.append(p.name)
    for p in d.glob(f".{LATEST}.*tmp"):  # an unfinished move of the pointer
        p.unlink(missing_ok=True)
    return done


def write_manifest(folder: Path, step: int, names, entries: dict[str, dict] | None = None) -> None:
    """``manifest.json``: size and sha256 of each of ``names`` in ``folder`` (and ``entries``
    hashed elsewhere: a sharded checkpoint's shards, by the ranks that wrote them), flushed.

    Training checkpoints list all of DATA_FILES; a weights-only checkpoint (an import from
    another format) lists the weights and meta.json only, and cannot be resumed from.
    """
    files = {**(entries or {}), **file_entries(folder, names)}
    (folder / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2))
    fsync_file(folder / MANIFEST)


def verify_checkpoint(folder: Path, share: tuple[int, int] = (0, 1)) -> None:
    """Raise :class:`CheckpointError` naming the first file that is missing, has the wrong
    size or the wrong sha256 according to ``manifest.json``. ``share=(r, n)``: check only
    every n-th file from the r-th (each of n ranks checks its share; they agree on the verdict)."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path}: missing, so {folder} cannot be verified") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({e})") from None
    for name in (SHARDS_METADATA if SHARDS_METADATA in files else MODEL_FILE, META_FILE):
        if name not in files:
            raise CheckpointError(f"{manifest_path}: lists no entry for {name}")
    rank, ranks = share
    for name in sorted(files)[rank::ranks]:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in the manifest)")
        size = path.stat().st_size
        if size != files[name]["size"]:
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {files[name]['size']}")
        if sha256_of(path) != files[name]["sha256"]:
            raise CheckpointError(f"{path}: sha256 differs from the manifest (the file is corrupt)")


def _checkpoints_dir(path: Path) -> Path:
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def latest_checkpoint(run_or_checkpoints_dir: Path) -> Path | None:
    """The folder that ``latest`` names, under ``RUN/checkpoints`` or the folder given, if it
    has been renamed into place (no verification; see :func:`find_checkpoint`)."""
    d = _checkpoints_dir(Path(run_or_checkpoints_dir))
    pointer = d / LATEST
    if not pointer.is_file():
        return None
    folder = d / pointer.read_text().strip()
    return folder if (folder / MANIFEST).is_file() else None


def find_checkpoint(run_or_checkpoints_dir: Path, fallback: bool = False,
                    warn=lambda message: None, verify=verify_checkpoint) -> Path:
    """The newest verified checkpoint of a run.

    Without ``fallback`` that is the one ``latest`` names, verified; any problem raises
    :class:`CheckpointError` naming the bad file. With ``fallback`` the checkpoints are tried
    newest first and each one that fails verification is reported through ``warn``.
    ``verify(folder)``: how a folder is verified (several ranks: each its share, agreed).
    """
    d = _checkpoints_dir(Path(run_or_checkpoints_dir))
    pointer = d / LATEST
    if not fallback:
        if not pointer.is_file():
            raise FileNotFoundError(f"no complete checkpoint under {d}: {LATEST} not found")
        folder = d / pointer.read_text().strip()
        if not folder.is_dir():
            raise CheckpointError(f"{pointer} names {folder.name}, which does not exist")
        verify(folder)
        return folder
    for folder in reversed(complete_folders(d)):
        try:
            verify(folder)
            return folder
        except CheckpointError as e:
            warn(f"skipping checkpoint {folder.name}: {e}")
    raise FileNotFoundError(f"no complete checkpoint under {d} passes verification")


def resolve_checkpoint(path: str | Path, verify: bool = True) -> Path:
    """A run folder, a checkpoints folder or a checkpoint folder -> the checkpoint folder,
    verified against its manifest."""
    path = Path(path)
    # Ours has its meta.json beside the weights (a Hugging Face or timm folder has config.json).
    if ((path / MODEL_FILE).is_file() and (path / META_FILE).is_file()) or is_sharded_checkpoint(path):
        folder = path
    else:
        folder = latest_checkpoint(path)
        if folder is None:
            raise FileNotFoundError(
                f"no checkpoint at {path}: expected a checkpoint folder with {MODEL_FILE}, "
                f"or a run folder whose checkpoints/{LATEST} names one"
            )
    if verify:
        verify_checkpoint(folder)
    return folder


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix.*``, with ``prefix.`` removed from their names."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_tensors(folder: Path, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors`` (of a sharded checkpoint: its weights, whole); with
    ``prefix`` only those keys, prefix removed."""
    if is_sharded_checkpoint(folder):
        tensors = _load_sharded_weights(Path(folder) / SHARDS)
    else:
        tensors = load_file(str(Path(folder) / MODEL_FILE))
    return tensors if prefix is None else strip_prefix(tensors, prefix)


def _load_sharded_weights(shards: Path) -> dict[str, torch.Tensor]:
    """The ``model.*`` tensors of a torch.distributed.checkpoint folder, whole, in this one
    process (no process group; the shards of every rank are read and put together)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(str(shards)).read_metadata()
    tensors = {key: torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
               for key, entry in metadata.state_dict_metadata.items()
               if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(tensors, checkpoint_id=str(shards), no_dist=True)
    return {key.removeprefix("model."): t for key, t in tensors.items()}


def weights_digest(folder: Path) -> str:
    """The sha256 that identifies a checkpoint's weights (of its weight file, or of its shards'
    entries), from the manifest: nothing is read but that."""
    files = json.loads((Path(folder) / MANIFEST).read_text())["files"]
    if MODEL_FILE in files:
        return files[MODEL_FILE]["sha256"]
    shards = sorted((k, v["sha256"]) for k, v in files.items() if k.startswith(SHARDS + "/"))
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


def load_train_state(folder: Path) -> dict[str, Any]:
    """``train_state.pt`` with ``weights_only=True``: a file holding anything but tensors and
    plain types (a pickled object, a "pickle bomb") is refused, never executed."""
    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page of advice; keep the line that says what was found.
        found = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        detail = (found[0].removeprefix("WeightsUnpickler error: ").split(" was not an allowed")[0]
                  if found else "not a tensors-only file")
        raise CheckpointError(
            f"{path}: refused to load, it holds more than tensors and plain types ({detail})"
        ) from e


def load_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META_FILE).read_text())
