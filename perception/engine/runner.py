"""mmengine's Runner with checkpoints that survive faults and loads that cannot run code.

mmengine 0.10.7 has two problems this module fixes without forking it:

- ``CheckpointHook`` deletes the oldest checkpoint *before* writing the new one, and writes in place:
  a crash mid-save can leave no complete checkpoint. :class:`AtomicCheckpointHook` writes the new
  file to a temporary name, fsyncs, renames it into place, verifies it loads, updates
  ``last_checkpoint`` atomically, and only then prunes old checkpoints.
- ``Runner.resume``/``load_checkpoint`` call ``torch.load`` without ``weights_only``; under torch >= 2.6
  that means ``weights_only=True`` and resuming fails on mmengine's own ``HistoryBuffer``. Turning the
  protection off would let any ``.pth`` run code. :class:`PerceptionRunner` loads through
  :func:`perception.engine.checkpoint.load_checkpoint`: ``weights_only=True`` with an allowlist of the
  data-only types mmengine writes; anything else is refused unless ``cfg.unsafe_load`` is set (the
  ``--unsafe-load`` flag). Weights whose shapes do not fit the model are an error, not a warning.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import mmengine
import torch
from mmengine.dist import is_main_process, master_only
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import weights_to_cpu
from mmengine.utils import apply_to

from perception.engine.checkpoint import (CheckpointError, atomic_save, atomic_write_text, load_checkpoint,
                                          load_weights, state_dict_shape_mismatches)


class CpuBf16OptimWrapper(OptimWrapper):
    """``--amp`` on CPU: the forward under ``torch.autocast("cpu", bfloat16)`` (bf16 needs no loss scaling).

    mmengine's ``AmpOptimWrapper`` asserts a CUDA device.
    """

    @contextlib.contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast("cpu", dtype=torch.bfloat16):
            yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _to_cpu(state):
    return apply_to(state, lambda x: hasattr(x, "cpu"), lambda x: x.cpu())


class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that never leaves the work dir without a complete, loadable checkpoint.

    Before training it removes the temporary files (``.<name>.tmp-<pid>``) of saves whose process
    died mid-write, logging each one.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not is_main_process():
            return
        for tmp in sorted(Path(self.out_dir).glob(".*.tmp-*")):
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                runner.logger.warning(f"removing {tmp.name}: an interrupted checkpoint save (process {pid} is gone)")
                tmp.unlink(missing_ok=True)

    def _save_checkpoint_with_step(self, runner, step, meta):
        to_prune = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                to_prune.append(self.keep_ckpt_ids.popleft())  # pruned only after the new one is safe
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch)
        if not is_main_process():
            return
        atomic_write_text(Path(runner.work_dir) / "last_checkpoint", str(self.last_ckpt))
        for old in to_prune:
            path = Path(self.out_dir) / self.filename_tmpl.format(old)
            if path.is_file():
                path.unlink()


class PerceptionRunner(Runner):
    """``Runner`` whose checkpoints are written atomically and loaded safely (see the module docstring)."""

    def register_default_hooks(self, hooks=None) -> None:
        hooks = dict(hooks or {})
        ckpt = dict(hooks.get("checkpoint") or {})
        if ckpt.get("type") in (None, "CheckpointHook", CheckpointHook):
            ckpt["type"] = AtomicCheckpointHook
        hooks["checkpoint"] = ckpt
        super().register_default_hooks(hooks)

    @property
    def unsafe_load(self) -> bool:
        return bool(self.cfg.get("unsafe_load", False))

    def load_checkpoint(self, filename: str, map_location="cpu", strict: bool = False,
                        revise_keys: list = [(r"^module\.", "")]):  # noqa: B006 (mmengine's signature)
        checkpoint = load_checkpoint(filename, map_location=map_location, trust=self.unsafe_load)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state = checkpoint.get("state_dict", checkpoint)
        for pattern, repl in revise_keys:
            state = {re.sub(pattern, repl, k): v for k, v in state.items()}
        bad = state_dict_shape_mismatches(model.state_dict(), state)
        if bad:
            raise CheckpointError(f"{filename}: {len(bad)} tensor(s) do not fit the model "
                                  f"({type(model).__name__}):\n  " + "\n  ".join(bad))
        missing, unexpected = load_weights(model, state, strict=False)
        if missing or unexpected:
            msg = f"{filename}: missing keys {list(missing)[:10]}, unexpected keys {list(unexpected)[:10]}"
            if strict:
                raise CheckpointError(msg)
            self.logger.warning(msg)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return checkpoint

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, file_client_args=None, save_optimizer: bool = True,
                        save_param_scheduler: bool = True, meta: dict | None = None, by_epoch: bool = True,
                        backend_args=None) -> None:
        """What mmengine's ``Runner.save_checkpoint`` writes, written with :func:`atomic_save` (local paths only)."""
        if file_client_args is not None or backend_args is not None:
            raise ValueError("PerceptionRunner.save_checkpoint writes local files only (no file_client/backend args)")
        meta = dict(meta or {})
        meta.setdefault("epoch", self.epoch + 1 if by_epoch else self.epoch)
        meta.setdefault("iter", self.iter if by_epoch else self.iter + 1)
        meta.update(cfg=self.cfg.pretty_text, seed=self.seed, experiment_name=self.experiment_name,
                    time=time.strftime("%Y%m%d_%H%M%S", time.localtime()), mmengine_version=mmengine.__version__)
        dataset = getattr(self.train_dataloader, "dataset", None)
        if hasattr(dataset, "metainfo"):
            meta["dataset_meta"] = dataset.metainfo
        model = self.model.module if is_model_wrapper(self.model) else self.model
        checkpoint = {"meta": meta, "state_dict": weights_to_cpu(model.state_dict()),
                      "message_hub": _to_cpu(self.message_hub.state_dict())}
        if save_optimizer:
            if not isinstance(self.optim_wrapper, OptimWrapper):
                raise TypeError(f"optim_wrapper should be an OptimWrapper, got {type(self.optim_wrapper).__name__}")
            checkpoint["optimizer"] = _to_cpu(self.optim_wrapper.state_dict())
        if save_param_scheduler and self.param_schedulers is not None:
            if isinstance(self.param_schedulers, dict):
                checkpoint["param_schedulers"] = {k: [s.state_dict() for s in v] for k, v in self.param_schedulers.items()}
            else:
                checkpoint["param_schedulers"] = [s.state_dict() for s in self.param_schedulers]
        self.call_hook("before_save_checkpoint", checkpoint=checkpoint)
        atomic_save(checkpoint, os.path.join(out_dir, filename))
