"""A multi-frame model in the pipeline: the model stage remembers earlier frames and hands them over as sweeps."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from perception.data.dataset import SimDataset
from perception.engine.checkpoint import atomic_save
from perception.pipeline.model_stage import ModelStage, build_model

CONFIG = Path(__file__).resolve().parents[2] / "configs/msf/msf_sim_cpu.py"


@pytest.fixture(scope="module")
def msf_stage(tmp_path_factory) -> ModelStage:
    from mmengine.config import Config

    spec = dict(Config.fromfile(str(CONFIG)).model, rpn_checkpoint=None)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("msf") / "msf.pth"
    atomic_save({"state_dict": build_model(spec).state_dict()}, path)
    return ModelStage(CONFIG, path)  # the config's rpn_checkpoint need not exist: the checkpoint has it all


def test_stage_attaches_remembered_frames_and_resets_on_reordering(msf_stage):
    ds = SimDataset(seeds=[4], frames=5)  # frames without sweeps, as a live stream delivers them
    frames = [ds[k].frame for k in range(5)]
    assert msf_stage.num_history == 3
    seen = [msf_stage._with_history(f) for f in frames]
    assert [len(f.sweeps) for f in seen] == [0, 1, 2, 3, 3]
    assert [round(s.timestamp, 3) for s in seen[4].sweeps] == [0.4, 0.3, 0.2]  # newest first, the last 3
    assert msf_stage.history_resets == 0
    again = msf_stage._with_history(frames[1])  # older than the last one: the history starts afresh
    assert again.sweeps == () and msf_stage.history_resets == 1
    late = replace(frames[2], timestamp=frames[2].timestamp + 5.0, token="late")  # a 5 s gap: stale history
    assert msf_stage._with_history(late).sweeps == () and msf_stage.history_resets == 2
    pred = msf_stage(frames[3])
    assert pred.model == "MSF" and pred.detections.boxes.tensor.shape[1] == 9  # with the RPN's velocity
