"""Checkpoints that cannot be half-written and do not run code when loaded.

``torch.save`` straight onto ``epoch_12.pth`` leaves a truncated file if the job dies mid-write,
and plain ``torch.load`` unpickles whatever the file names, so a downloaded ``.pth`` can run any
code. Here:

- :func:`atomic_save` writes a temporary file beside the target, fsyncs it, loads it back, and only
  then renames it over the target: the previous file stays intact until the new one is complete.
- :func:`load_checkpoint` loads ``.pth`` with ``weights_only=True`` and :data:`SAFE_GLOBALS`, the
  data-only types mmengine 0.10.7's ``Runner`` writes (``HistoryBuffer`` and numpy arrays, scalars
  and dtypes); anything else raises :class:`UnsafeCheckpointError` unless the caller passes
  ``trust=True``.
- :func:`export_safetensors` publishes weights as ``.safetensors`` (no pickle at all) with a sha256
  ``manifest.json`` beside them, which :func:`load_checkpoint` checks before loading.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

import numpy as np
import safetensors
import safetensors.torch
import torch
from mmengine.logging.history_buffer import HistoryBuffer

try:  # numpy >= 1.26 has numpy._core (numpy 2 pickles name it); the functions are the same objects
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core import multiarray as _multiarray

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, unsafe, or does not fit."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.pth`` names globals outside :data:`SAFE_GLOBALS`: unpickling it could run code."""


# ---------------------------------------------------------------------------------------------
# The allowlist
# ---------------------------------------------------------------------------------------------

_HISTORY_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while unpickling: ``HistoryBuffer.<min|max|current|mean>`` only.

    ``HistoryBuffer.__getstate__`` pickles its statistics methods, and pickle writes a method as
    ``getattr(HistoryBuffer, "min")``; the real ``getattr`` would hand a file any attribute of any
    allowed object.
    """
    if obj is HistoryBuffer and name in _HISTORY_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"refused getattr({obj!r}, {name!r}): only HistoryBuffer statistics "
                                 f"{_HISTORY_STATISTICS} may be looked up")


# numpy dtypes mmengine's logs and dataset metadata hold. numpy >= 1.25 builds a dtype and then sets
# its state, so each dtype *class* must be allowed too; the object dtype is left out on purpose.
_NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "complex64", "complex128", "U", "S")

#: What ``torch.load(weights_only=True)`` may build beyond its defaults, found by listing
#: ``torch.serialization.get_unsafe_globals_in_checkpoint`` of checkpoints written by a real
#: mmengine 0.10.7 ``Runner`` (CheckpointHook, save_best, EMAHook, val metrics, numpy dataset_meta).
#: Data only: nothing here can run code or touch files.
SAFE_GLOBALS: list[Callable | tuple[Callable, str]] = [
    HistoryBuffer,  # MessageHub.log_scalars
    (_history_buffer_getattr, "builtins.getattr"),  # HistoryBuffer's pickled statistics methods
    np.ndarray,
    np.dtype,
    (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),  # arrays, numpy 1.x pickles
    (_multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),  # ... numpy 2.x pickles
    (_multiarray.scalar, "numpy.core.multiarray.scalar"),  # numpy scalars (np.float64 metrics)
    (_multiarray.scalar, "numpy._core.multiarray.scalar"),
    *(type(np.dtype(code)) for code in _NUMPY_DTYPES),
]


def _allowed_names() -> set[str]:
    names = set()
    for g in SAFE_GLOBALS:
        names.add(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}")
    return names


@contextlib.contextmanager
def _history_buffer_registry_kept() -> Iterator[None]:
    """Undo what unpickling does to ``HistoryBuffer._statistics_methods``, a class-level registry.

    ``HistoryBuffer.__setstate__`` merges the file's ``statistics_methods`` into it, so a file
    could otherwise swap a process-wide statistic for another allowed callable.
    """
    registry = HistoryBuffer._statistics_methods
    before = dict(registry)
    try:
        yield
    finally:
        registry.clear()
        registry.update(before)
        for name in _HISTORY_STATISTICS:  # what HistoryBuffer.__init__ registers
            registry.setdefault(name, getattr(HistoryBuffer, name))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _override_hint() -> str:
    return ("If the file comes from an author you trust, load it with trust=True (the --unsafe-load flag "
            "of tools/train.py, tools/test.py and tools/publish_model.py); that unpickles it in full and "
            "can run any code it holds.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


_UNSAFE_PATTERNS = ("Unsupported global", "refused getattr", "Can only build", "Can only create new object",
                    "Trying to call reduce for unrecognized function", "whose module",
                    "Unsupported operand")  # a pickle opcode the weights-only reader refuses (e.g. protocol >= 4)


def _load_pth(path: Path, map_location: Any, trust: bool, shown: Path | None = None) -> dict:
    """``torch.load`` ``path`` safely (or in full with ``trust``); errors name ``shown`` (default ``path``)."""
    shown = shown or path
    if trust:
        logger.warning("Loading %s with trust=True: unpickling runs any code the file holds.", shown)
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:
            raise CheckpointError(f"{shown}: cannot load checkpoint: {type(e).__name__}: {_first_line(e)}") from e
    else:
        if zipfile.is_zipfile(path):  # list the globals first: this reads the pickle, it runs nothing
            try:
                found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except pickle.UnpicklingError as e:
                if any(p in str(e) for p in _UNSAFE_PATTERNS):
                    raise UnsafeCheckpointError(
                        f"{shown}: refusing to load: the weights-only reader does not accept it "
                        f"({_first_unsafe_line(str(e))}). {_override_hint()}") from e
                raise CheckpointError(f"{shown}: not a readable torch checkpoint (truncated or corrupt?): "
                                      f"{_first_line(e)}") from e
            except Exception as e:
                raise CheckpointError(f"{shown}: not a readable torch checkpoint (truncated or corrupt?): "
                                      f"{type(e).__name__}: {_first_line(e)}") from e
            unsafe = sorted(set(found) - _allowed_names())
            if unsafe:
                raise UnsafeCheckpointError(
                    f"{shown}: refusing to load: it names globals outside the allowlist of data-only types "
                    f"(perception.engine.checkpoint.SAFE_GLOBALS), which could run code when unpickled: "
                    f"{', '.join(unsafe)}. {_override_hint()}")
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS), _history_buffer_registry_kept():
                obj = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            if any(p in msg for p in _UNSAFE_PATTERNS):
                raise UnsafeCheckpointError(
                    f"{shown}: refusing to load: it holds something outside the allowlist of data-only types "
                    f"(perception.engine.checkpoint.SAFE_GLOBALS): {_first_unsafe_line(msg)}. "
                    f"{_override_hint()}") from e
            raise CheckpointError(f"{shown}: not a readable torch checkpoint (truncated or corrupt?): "
                                  f"{_first_line(e)}") from e
        except Exception as e:
            raise CheckpointError(f"{shown}: not a readable torch checkpoint (truncated or corrupt?): "
                                  f"{type(e).__name__}: {_first_line(e)}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{shown}: expected a checkpoint dict (or a state dict), got {type(obj).__name__}")
    return obj


def _first_unsafe_line(msg: str) -> str:
    for line in msg.splitlines():
        if any(p in line for p in _UNSAFE_PATTERNS):
            return line.strip()[:300]
    return msg.strip().splitlines()[0][:300] if msg.strip() else "refused by the weights-only unpickler"


def load_checkpoint(path: PathLike, map_location: Any = "cpu", trust: bool = False) -> dict:
    """Load a ``.pth`` checkpoint without running code, or a ``.safetensors`` file after its sha256 check.

    Parameters
    ----------
    path : checkpoint file. ``.safetensors`` files are checked against a ``manifest.json`` beside
        them when it lists them; anything else is read with ``torch.load``.
    map_location : as for ``torch.load``; for ``.safetensors`` a device string.
    trust : unpickle a ``.pth`` in full (``weights_only=False``). Only for files from a trusted author.

    Returns
    -------
    dict
        The checkpoint as saved; for ``.safetensors``, ``{"state_dict": tensors, "meta": {...}}``.

    Raises
    ------
    UnsafeCheckpointError
        The file names globals outside :data:`SAFE_GLOBALS` (and ``trust`` is False).
    CheckpointError
        The file is missing, truncated, corrupt, not a checkpoint, or fails its manifest check.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    return _load_pth(path, map_location, trust)


def _load_safetensors(path: Path, map_location: Any) -> dict:
    entry = _manifest_entry(path)
    if entry is not None:
        _check_entry(path, entry)
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta: dict[str, Any] = dict(f.metadata() or {})
        tensors = safetensors.torch.load_file(str(path), device=device)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {type(e).__name__}: {_first_line(e)}") from e
    meta.update(entry or {})
    return {"state_dict": tensors, "meta": meta}


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def _write(obj: Any, fileobj: IO[bytes]) -> None:
    """The byte writing of :func:`atomic_save` (a seam: tests replace it to crash mid-write)."""
    torch.save(obj, fileobj)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the file itself is already synced
        pass
    finally:
        os.close(fd)


def _replace_atomically(path: PathLike, write: Callable[[IO[bytes]], None],
                        verify: Callable[[Path], None] | None = None) -> Path:
    """Write ``path`` via a synced temporary file in its directory, check it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, CheckpointError):
            raise type(e)(f"not saved, {path} left as it was: {e}") from e
        if isinstance(e, Exception):
            raise CheckpointError(f"not saved, {path} left as it was: {type(e).__name__}: {_first_line(e)}") from e
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: PathLike, trust: bool = False) -> Path:
    """``torch.save`` ``obj`` to ``path`` so that ``path`` holds the old file or the complete new one.

    The new file is written beside ``path``, fsynced, loaded back with :func:`load_checkpoint`
    (safe mode unless ``trust``), and only then renamed over ``path``; the directory is fsynced.

    Raises
    ------
    CheckpointError
        Writing or loading back failed; the temporary file is removed and ``path`` is untouched.
        :class:`UnsafeCheckpointError` when ``obj`` holds types a safe load would refuse.
    """
    path = Path(path)
    return _replace_atomically(path, lambda f: _write(obj, f),
                               verify=lambda tmp: _load_pth(tmp, "cpu", trust, shown=path))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, e.g. mmengine's ``last_checkpoint`` pointer."""
    data = text.encode("utf-8")
    return _replace_atomically(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------------------------
# safetensors export and its manifest
# ---------------------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(manifest: Path) -> dict:
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{manifest}: unreadable manifest: {_first_line(e)}") from e
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise CheckpointError(f"{manifest}: not a checkpoint manifest (no 'files' mapping)")
    return data


def _manifest_entry(path: Path) -> dict | None:
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    return _read_manifest(manifest)["files"].get(path.name)


def _check_entry(path: Path, entry: dict) -> None:
    size = path.stat().st_size
    if "size" in entry and size != entry["size"]:
        raise CheckpointError(f"{path}: {size} bytes, but {MANIFEST} says {entry['size']}: truncated or replaced")
    digest = _sha256_file(path)
    if digest != entry.get("sha256"):
        raise CheckpointError(f"{path}: sha256 {digest} does not match {MANIFEST} ({entry.get('sha256')}): "
                              "the file was modified or corrupted")


def verify_manifest(path: PathLike) -> dict:
    """Check a ``.safetensors`` file's size and sha256 against the ``manifest.json`` beside it.

    Returns
    -------
    dict
        The file's manifest entry.

    Raises
    ------
    CheckpointError
        No file, no manifest, no entry for the file, or a size/sha256 mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    entry = _manifest_entry(path)
    if entry is None:
        raise CheckpointError(f"{path}: not listed in {path.parent / MANIFEST}")
    _check_entry(path, entry)
    return entry


def _strip_module_prefix(state: dict) -> dict:
    """Drop the ``module.`` that DataParallel/DistributedDataParallel put before every key."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def export_safetensors(checkpoint_path: PathLike, out_dir: PathLike, name: str | None = None,
                       trust: bool = False) -> Path:
    """Publish a checkpoint's weights as ``<out_dir>/<name>.safetensors`` and record it in ``manifest.json``.

    Parameters
    ----------
    checkpoint_path : ``.pth`` (loaded with :func:`load_checkpoint`) holding a ``state_dict``, or a
        bare state dict.
    out_dir : where the ``.safetensors`` file and ``manifest.json`` go (created if missing).
    name : file stem; default the checkpoint's stem.
    trust : passed to :func:`load_checkpoint`.

    Returns
    -------
    Path
        The ``.safetensors`` file. Its manifest entry holds: file, sha256, size, num_tensors,
        num_parameters (elements over all tensors, buffers included), source, epoch/iter and config
        when the checkpoint's meta has them, torch_version, created (UTC ISO 8601). Entries for
        other files in the manifest are kept.
    """
    src = Path(checkpoint_path)
    ckpt = load_checkpoint(src, trust=trust)
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict):
        raise CheckpointError(f"{src}: 'state_dict' is a {type(state).__name__}, not a dict")
    state = _strip_module_prefix(state)
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{src}: state_dict entries are not tensors and cannot go in safetensors: "
                              f"{', '.join(not_tensors[:10])}")
    if not state:
        raise CheckpointError(f"{src}: state_dict is empty")
    # clone: safetensors refuses tensors that share storage (tied weights, views of one buffer)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}

    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    out_dir = Path(out_dir)
    name = name or src.stem
    out = out_dir / f"{name}.safetensors"
    header = {"format": "pt", "source": src.name}
    for key in ("epoch", "iter"):
        if key in meta:
            header[key] = str(meta[key])
    data = safetensors.torch.save(tensors, metadata=header)
    digest = hashlib.sha256(data).hexdigest()

    def check(tmp: Path) -> None:
        if _sha256_file(tmp) != digest:
            raise CheckpointError(f"{out}: the bytes on disk differ from the bytes written")

    _replace_atomically(out, lambda f: f.write(data), verify=check)

    entry: dict[str, Any] = {
        "file": out.name,
        "sha256": digest,
        "size": len(data),
        "num_tensors": len(tensors),
        "num_parameters": int(sum(t.numel() for t in tensors.values())),
        "source": src.name,
    }
    for key in ("epoch", "iter"):
        if key in meta:
            entry[key] = int(meta[key])
    if isinstance(meta.get("cfg"), str):
        entry["config"] = meta["cfg"]
    entry["torch_version"] = torch.__version__
    entry["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    manifest = out_dir / MANIFEST
    doc = _read_manifest(manifest) if manifest.exists() else {"format": 1, "files": {}}
    doc["files"][out.name] = entry
    atomic_write_text(manifest, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out


# ---------------------------------------------------------------------------------------------
# Fit to a model
# ---------------------------------------------------------------------------------------------

def state_dict_shape_mismatches(model_state: dict, ckpt_state: dict) -> list[str]:
    """Keys present in both whose shapes differ, as ``"key: checkpoint [a, b] vs model [c, d]"`` lines.

    Keys missing on either side are not reported here (``load_state_dict(strict=...)`` does that).
    """
    lines = []
    for key, value in model_state.items():
        if key not in ckpt_state:
            continue
        want, got = getattr(value, "shape", None), getattr(ckpt_state[key], "shape", None)
        if want is not None and got is not None and tuple(want) != tuple(got):
            lines.append(f"{key}: checkpoint {list(got)} vs model {list(want)}")
    return lines


def load_weights(model: torch.nn.Module, state: Mapping[str, Any], strict: bool = False):
    """``model.load_state_dict(state, strict)`` with the model's own module versions attached.

    A ``state_dict()`` carries per-module versions in its ``_metadata``; weights that went through
    safetensors, a dict comprehension or a plain ``dict`` have lost them. Some loaders read the
    version: once ``mmdet3d.models`` is imported, spconv's ``_load_from_state_dict`` is mmdet3d's,
    which takes any sparse-conv weight without version 2 for spconv 1.x's layout and permutes it
    (scrambling it). Our checkpoints always hold the running code's layout, so the model's own
    metadata is the right one. Returns ``load_state_dict``'s ``(missing, unexpected)``.
    """
    from collections import OrderedDict

    state = OrderedDict(state)
    meta = getattr(model.state_dict(), "_metadata", None)
    if meta is not None:
        state._metadata = meta  # type: ignore[attr-defined]
    return model.load_state_dict(state, strict=strict)
