"""``tools/benchmark.py models``: MSF's and GaussianFusion's CPU latency per frame, at both config sizes.

MSF: its RPN and its head apart.

One synthetic frame with its 3 earlier sweeps (HDL-64, ~120k points each). The RPN row is the
preprocessing (crop, time lags), the sparse encoder, the BEV backbone and the heatmap decoding; the
head row is what MSF adds: propagation, pooling from 4 frames, the region network and the final
decoding and NMS (the proposal NMS between them takes well under a millisecond and is in neither). Weights are random (latency does not depend on them), but the
RPN's score threshold is 0 so the head always gets its full ``num_proposals``. The head's peer is
the RPN measured in the same run: ``speedup`` = RPN time / head time.

GaussianFusion: ``GaussianFusion.plan`` on one synthetic frame with the 3 front cameras (CAM_L0,
CAM_F0, CAM_R0, 640x360) and the HDL-64 sweep, end to end: the inputs (LiDAR histogram, image
resizing, ego status), the encoders, the Gaussian blocks, the cascade planning head and the rendered
BEV map; ``inputs_ms`` is the input building alone. Weights are random, which does not change the
latency (no agent tokens: the configs have ``max_agents=0``). No peer.
"""
from __future__ import annotations

import torch

from tools.bench.common import median_ms

CONFIGS = {"cpu": "configs/msf/msf_sim_cpu.py", "paper": "configs/msf/msf_sim.py"}
GF_CONFIGS = {"cpu": "configs/gaussian_fusion/gaussian_fusion_sim_cpu.py",
              "paper": "configs/gaussian_fusion/gaussian_fusion_sim.py"}


def _model(path: str):
    from perception.engine.cli import load_config

    cfg = load_config(path)
    kw = dict(cfg.model)
    kind = kw.pop("type")
    kw["rpn_checkpoint"] = None
    kw["rpn"] = dict(kw["rpn"], head=dict(kw["rpn"]["head"], score_threshold=0.0))
    return kind(**kw).eval(), kw


def rows(repeats: int, threads=(1, 2), configs: dict[str, str] = CONFIGS,
         cache_dir: str | None = "work_dirs/sim_cache", gf_configs: dict[str, str] = GF_CONFIGS) -> list[dict]:
    """MSF's rows (``configs``), then GaussianFusion's (``gf_configs``)."""
    return (msf_rows(repeats, threads, configs, cache_dir) if configs else []) + (
        gaussian_fusion_rows(repeats, threads, gf_configs, cache_dir) if gf_configs else [])


def gaussian_fusion_rows(repeats: int, threads=(1, 2), configs: dict[str, str] = GF_CONFIGS,
                         cache_dir: str | None = "work_dirs/sim_cache") -> list[dict]:
    from perception.data.dataset import SimDataset
    from perception.engine.cli import load_config
    from perception.models.gaussian_fusion.features import build_inputs
    from tools.bench.common import op_row

    frame = SimDataset(seeds=[1000], frames=1, render_cameras=True, rigs=("navsim",), cache_dir=cache_dir)[0].frame
    command = frame.meta.get("driving_command")
    out = []
    for size, path in configs.items():
        kw = dict(load_config(path).model, anchors=None)  # random weights; the anchors' values do not matter
        torch.manual_seed(0)
        model = kw.pop("type")(**kw).eval()
        for n in threads:
            torch.set_num_threads(n)
            plan_ms = median_ms(lambda: model.plan([frame], [command]), repeats)
            inputs_ms = median_ms(lambda: build_inputs([frame], [command], model.lidar_grid, model.image_size,
                                                       model.cameras), repeats)
            params = {"config": path, "cameras": [c for c in model.cameras if c in frame.cameras],
                      "points": len(frame.points.points),
                      "gaussians": model.init_means.shape[0], "dim": model.dim, "blocks": len(model.blocks),
                      "image_size": list(model.image_size), "lidar_grid": list(model.lidar_grid.shape),
                      "anchors": model.planner.anchors.shape[0], "weights": "random",
                      "params": sum(p.numel() for p in model.parameters())}
            out.append(op_row("gaussian_fusion", f"GaussianFusion ({size}): inputs, Gaussian encoder, cascade planning",
                              None, params, plan_ms, None, n, inputs_ms=round(inputs_ms, 3)))
    return out


def msf_rows(repeats: int, threads=(1, 2), configs: dict[str, str] = CONFIGS,
             cache_dir: str | None = "work_dirs/sim_cache") -> list[dict]:
    from perception.data.dataset import SimDataset
    from tools.bench.common import op_row

    sample = SimDataset(seeds=[1000], frames=6, sweeps=3, cache_dir=cache_dir)[5]
    out = []
    for size, path in configs.items():
        model, kw = _model(path)
        data = model.data_preprocessor([sample], False)
        inputs = data["inputs"]
        for n in threads:
            torch.set_num_threads(n)
            with torch.no_grad():
                rpn_ms = median_ms(lambda: model.rpn.decode(model.rpn.extract(model.data_preprocessor([sample], False)["inputs"])),
                                   repeats)
                props = model.proposals(inputs)

                def head():
                    res, iou = model._head(inputs, props, training=False)
                    model.decode(props, res, iou)

                head_ms = median_ms(head, repeats)
            params = {"config": path, "frames": model.frames, "proposals": len(props[0][0]),
                      "points_per_proposal_frame": model.max_points, "points": [len(h) for h in inputs.history[0]],
                      "rpn_params": sum(p.numel() for p in model.rpn.parameters()),
                      "head_params": sum(p.numel() for p in model.head.parameters())}
            out.append(op_row("msf_rpn", f"MSF RPN ({size})", None, params, rpn_ms, None, n))
            out.append(op_row("msf_head", f"MSF head ({size}): 4-frame pooling, region network, NMS", f"MSF RPN ({size})",
                              params, head_ms, rpn_ms, n))
    return out
