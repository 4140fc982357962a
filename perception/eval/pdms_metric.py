"""The PDM score as an mmengine metric, with NAVSIM's two baselines scored on the same scenes.

Every validation sample needs its :class:`~perception.eval.pdms.PlanningScene` in
``Targets.meta["planning_scene"]`` (``SimDataset(planning_scenes=True)``). Per sample the metric
scores the model's plan and, in the same harness, NAVSIM's constant-velocity agent (straight ahead
at the current speed) and its ego-status MLP (trained here, once, on ``baseline_train``'s ego
statuses and futures, so that it sees the same training split as the model). Keys: the model's
``pdms, nc, dac, ttc, ep, comfort, ...`` and the same under ``constant_velocity/`` and ``ego_mlp/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from perception.eval.pdms import mean_scores, pdm_score
from perception.structures import Plan, PlanningOutput, Sample


class PDMScore(BaseMetric):
    """Scene-averaged PDMS of a planner and of the baselines (see the module docstring).

    Args:
        baseline_train: a dataset config (``type`` + kwargs) whose samples train the ego-status MLP;
            None leaves that baseline out.
        mlp_epochs: its training epochs (NAVSIM's settings otherwise: Adam, lr 1e-4, batch 64, L1).
        cache_dir: where the training records are kept between runs.
    """

    default_prefix = "pdms"

    def __init__(self, baseline_train: dict | None = None, mlp_epochs: int = 300, cache_dir: str | None = None,
                 collect_device: str = "cpu", prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.baseline_train, self.mlp_epochs, self.cache_dir = baseline_train, int(mlp_epochs), cache_dir
        self._mlp = None

    def ego_mlp(self):
        """The ego-status MLP baseline, trained on first use (seeded; the same every run)."""
        if self._mlp is None and self.baseline_train is not None:
            from perception.models.planning.anchors import planning_records, dataset_key
            from perception.models.planning.baselines import EgoStatusMLP, train_ego_status_mlp

            cfg = dict(self.baseline_train)
            cls = cfg.pop("type")
            cache = Path(self.cache_dir) / f"planning_records_{dataset_key(cls, cfg)}.npz" if self.cache_dir else None
            status, futures = planning_records(cls(**cfg), cache)
            torch.manual_seed(0)
            mlp = EgoStatusMLP()
            with torch.enable_grad():  # evaluation loops run under no_grad
                train_ego_status_mlp(mlp, status, futures, epochs=self.mlp_epochs)
            self._mlp = mlp.eval()
        return self._mlp

    def process(self, data_batch: Sequence[Sample], data_samples: Sequence[PlanningOutput | Plan]) -> None:
        from perception.models.gaussian_fusion.features import ego_status
        from perception.models.planning.baselines import constant_velocity

        mlp = self.ego_mlp()
        for sample, out in zip(data_batch, data_samples):
            scene = sample.targets.meta.get("planning_scene") if sample.targets is not None else None
            if scene is None:
                raise ValueError(f"PDMScore: frame {sample.frame.token} has no planning scene "
                                 "(use SimDataset(planning_scenes=True))")
            plan = out.plan if isinstance(out, PlanningOutput) else out
            status = ego_status(sample.frame, sample.targets.driving_command).numpy()
            rec = {"model": pdm_score(plan.trajectory, scene),
                   "constant_velocity": pdm_score(constant_velocity(float(np.hypot(status[0], status[1]))), scene)}
            if mlp is not None:
                rec["ego_mlp"] = pdm_score(mlp.plan(status), scene)
            self.results.append(rec)

    def compute_metrics(self, results: list) -> dict[str, float]:
        out = {}
        for name in results[0]:
            prefix = "" if name == "model" else f"{name}/"
            out.update({f"{prefix}{k}": v for k, v in mean_scores([r[name] for r in results]).items()})
        return out
