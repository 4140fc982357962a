"""tools/calib_flow_probe.py: the displacement fields and the PnP offsets it reports, on a few synthetic pairs."""
from __future__ import annotations

import pytest
import torch

from perception.models.calibformer.data import CalibSimDataset
from perception.models.calibformer.model import CalibFormer
from tools.calib_flow_probe import probe


@pytest.fixture(scope="module")
def samples():
    ds = CalibSimDataset(seeds=[7], frames=1, size=(64, 32), max_points=4000, fixed_seed=0)
    return [ds[i] for i in range(3)]


def test_probe_of_an_untrained_head_and_of_the_true_field(samples):
    torch.manual_seed(0)
    net = CalibFormer(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2, enc_layers=1, dec_layers=1,
                      flow=True).eval()
    out = probe(net, samples, noise=(0.0, 2.0), batch_size=2)
    f, pnp = out["field"], out["pnp_cm"]
    assert out["pairs"] == 3 and f["head"] == [0.0, 0.0]  # the head starts at no displacement
    assert f["head error"] == pytest.approx(f["true"]) and 0 < f["offset part"][0] < f["true"][0]
    assert pnp["head"][0] == pytest.approx(pnp["start"][0], rel=0.05)  # no displacement: the offset stays
    assert pnp["true + 0 px"][0] < 0.2 * pnp["start"][0]  # the true field gives the offset back
    assert pnp["true + 0 px"][0] < pnp["true + 2 px"][0] < pnp["start"][0]
    with pytest.raises(ValueError, match="no displacement head"):
        probe(CalibFormer(widths=(8, 16, 16, 16), feat_dim=16, dim=32, heads=2, corr_heads=2), samples)
