"""CalibFormer (ICRA 2024): LiDAR-camera extrinsic calibration; see :mod:`.model`."""
from perception.models.calibformer.align import CalibAligned
from perception.models.calibformer.cascade import CalibCascade
from perception.models.calibformer.data import CalibInput, CalibSample, CalibSimDataset, CalibTarget, calib_input
from perception.models.calibformer.geometry import (DEFAULT_RANGE, LCCNET_RANGE, Miscalibration,
                                                    sample_miscalibration)
from perception.models.calibformer.model import CalibBatch, CalibFormer, CalibPrediction

__all__ = ["CalibAligned", "CalibBatch", "CalibCascade", "CalibFormer", "CalibInput", "CalibPrediction", "CalibSample", "CalibSimDataset",
           "CalibTarget", "DEFAULT_RANGE", "LCCNET_RANGE", "Miscalibration", "calib_input", "sample_miscalibration"]
