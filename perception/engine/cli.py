"""What ``tools/train.py`` and ``tools/test.py`` share: loading a config, checked overrides, clean errors.

``--cfg-options`` keys must exist in the config (mmengine would silently add a misspelt key and
train with the default); a missing data root, an unsafe or mismatched checkpoint and a bad key end
with one line on stderr and exit code 2 instead of a traceback.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from perception.data.common import DataError
from perception.engine.checkpoint import CheckpointError

EXIT_USAGE = 2


class ConfigError(ValueError):
    """A config that cannot be used as given (unknown key, wrong value)."""


def _is_dict(node) -> bool:
    return isinstance(node, Mapping) or hasattr(node, "keys") and hasattr(node, "__getitem__")  # Config too


def _known(node) -> list[str]:
    return [str(k) for k in node.keys()] if _is_dict(node) else [str(i) for i in range(len(node))]


def check_option_keys(cfg, options: Mapping[str, object]) -> None:
    """Raise :class:`ConfigError` for an override ``a.b.c`` whose path does not exist in ``cfg``."""
    for key in options:
        node, walked = cfg, []
        for part in key.split("."):
            if _is_dict(node):
                present = part in node.keys()
            elif isinstance(node, (list, tuple)):
                present = part.isdigit() and int(part) < len(node)
            else:
                raise ConfigError(f"--cfg-options {key}: '{'.'.join(walked)}' is a {type(node).__name__}, not a dict")
            if not present:
                where = ".".join(walked) or "the config"
                close = difflib.get_close_matches(part, _known(node), n=3)
                hint = f"; did you mean {close}?" if close else f"; keys there: {sorted(_known(node))[:20]}"
                raise ConfigError(f"--cfg-options {key}: no key '{part}' in {where}{hint}")
            node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
            walked.append(part)


def load_config(path: str | Path, options: Mapping[str, object] | None = None, work_dir: str | None = None):
    """``Config.fromfile`` + checked ``--cfg-options`` + work dir (flag, else config, else ``work_dirs/<name>``)."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config not found: {path}")
    cfg = Config.fromfile(str(path))
    if options:
        check_option_keys(cfg, options)
        cfg.merge_from_dict(dict(options))
    cfg.work_dir = work_dir or cfg.get("work_dir") or str(Path("work_dirs") / path.stem)
    return cfg


def configure_device(cfg, launcher: str, amp: bool = False) -> None:
    """CPU-aware settings: DDP without ``device_ids`` on CPU, bf16 autocast for ``--amp`` on CPU."""
    import torch

    cfg.launcher = launcher
    if launcher != "none" and not torch.cuda.is_available():
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    if amp:  # a LazyObject, as the config's own imports are, so the config still dumps as text
        from mmengine.config.lazy import LazyObject

        if torch.cuda.is_available():
            cfg.optim_wrapper.type = LazyObject("mmengine.optim", "AmpOptimWrapper")
            cfg.optim_wrapper.loss_scale = "dynamic"
        else:
            cfg.optim_wrapper.type = LazyObject("perception.engine.runner", "CpuBf16OptimWrapper")


def init_torch_distributed(launcher: str) -> None:
    """Start the process group for ``--launcher pytorch`` (torchrun's env vars) on any device.

    mmengine's own init calls ``torch.cuda.set_device`` unconditionally, which fails on a CPU build;
    once a group exists mmengine uses it.
    """
    import torch
    import torch.distributed as dist

    if launcher != "pytorch" or dist.is_initialized():
        return
    missing = [v for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"--launcher pytorch needs torchrun's environment; {missing} not set "
                          "(run: torchrun --nproc_per_node N tools/train.py CONFIG --launcher pytorch)")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def build_train_config(config: str | Path, options: Mapping[str, object] | None = None, work_dir: str | None = None,
                       launcher: str = "none", amp: bool = False, resume: str | None = None,
                       load_from: str | None = None, unsafe_load: bool = False):
    """The training config as ``tools/train.py`` builds it (also run inside every Ray Train worker).

    ``resume="auto"`` resumes from the work dir's ``last_checkpoint``; a path resumes from that file.
    """
    if resume and load_from:
        raise ConfigError("--resume and --load-from exclude each other")
    cfg = load_config(config, options, work_dir)
    configure_device(cfg, launcher, amp)
    if resume:
        cfg.resume, cfg.load_from = True, None if resume == "auto" else resume
    elif load_from:
        cfg.load_from = load_from
    if unsafe_load:
        cfg.unsafe_load = True
    return cfg


@contextlib.contextmanager
def clean_errors(prog: str) -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and ``SystemExit(2)``."""
    try:
        yield
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except TypeError as e:
        if "unexpected keyword argument" in str(e) or "missing" in str(e) and "required" in str(e):
            print(f"{prog}: config error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        raise
