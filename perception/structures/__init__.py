"""Typed dataclasses that pass between the pipeline's stages (see DESIGN.md, "Interfaces")."""
from perception.geometry.camera_base import CameraModel
from perception.geometry.se3 import SE3
from perception.structures.boxes import Boxes3D, Detections
from perception.structures.calibration import Calibration
from perception.structures.depth import DepthMap
from perception.structures.frame import Frame, Sample, Targets
from perception.structures.gaussians import BevGaussians, PlanningOutput
from perception.structures.pose import EgoPose, Plan, Trajectory
from perception.structures.sensors import CameraImage, PointCloud

__all__ = [
    "BevGaussians", "Boxes3D", "Calibration", "CameraImage", "CameraModel", "DepthMap", "Detections", "EgoPose",
    "Frame", "Plan", "PlanningOutput", "PointCloud", "SE3", "Sample", "Targets", "Trajectory",
]
