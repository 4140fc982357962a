"""camera_io: every camera model survives a round trip through a dict and JSON, bit for bit."""
from __future__ import annotations

import json

import numpy as np
import pytest

from perception.geometry.camera_io import CAMERA_MODELS, camera_from_dict, camera_to_dict
from perception.geometry.cameras import KannalaBrandtCamera, MEICamera, PinholeCamera, RadialPolyFisheye

MODELS = [
    PinholeCamera(1392, 512, 788.629315, 786.382230, 687.158398, 317.752196, -0.344441, 0.141678, 0.000414, -0.000222, -0.029608),
    MEICamera(1400, 1400, 2.2134047507854890, 1.6798235660113681e-02, 1.6548773243373522, 4.2223943394772046e-04,
              4.2462134260997584e-04, 1.3363220825849971e03, 1.3357883350012958e03, 7.1694323510126321e02, 7.0576498308221585e02),
    KannalaBrandtCamera(848, 800, 285.72, 285.93, 420.8, 402.9, -0.00678, 0.04445, -0.04165, 0.00793),
    RadialPolyFisheye(1280, 966, 339.749, -31.988, 48.275, -7.201, 3.942, -3.093, 1.0),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_round_trip_is_exact(model):
    d = camera_to_dict(model)
    assert d["model"] == type(model).__name__ and isinstance(d["width"], int)
    back = camera_from_dict(json.loads(json.dumps(d)))
    assert type(back) is type(model) and back == model
    pts = np.array([[0.3, -0.2, 2.0], [1.0, 0.5, 0.4]])
    assert np.array_equal(back.project(pts)[0], model.project(pts)[0])  # derived limits rebuilt too


def test_every_model_is_mapped():
    assert {type(m).__name__ for m in MODELS} == set(CAMERA_MODELS)


def test_unknown_model_or_parameter_is_named():
    with pytest.raises(ValueError, match="OmniCamera"):
        camera_from_dict({"model": "OmniCamera", "width": 10, "height": 10})
    with pytest.raises(ValueError, match="None"):
        camera_from_dict({"width": 10, "height": 10})
    d = camera_to_dict(MODELS[0])
    with pytest.raises(ValueError, match="'xi'"):
        camera_from_dict({**d, "xi": 1.0})
    del d["fx"]
    with pytest.raises(ValueError, match="'fx'"):
        camera_from_dict(d)
