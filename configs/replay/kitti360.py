"""Replay a KITTI-360 drive recorded as a ROS bag (``perception.data.rosbag_export.write_recording``): explicit topics.

    python tools/replay.py out/kitti360.bag --config configs/replay/kitti360.py --out out/replay/kitti360.mcap
"""
rosbag = dict(
    topics={"/velodyne/points": "velodyne", "/image_00/image_raw": "image_00"},
    camera_info={"/image_00/image_raw": "/image_00/camera_info"},
    reference="velodyne", ego_frame="base_link", pose_source="auto", reorder_window=0.2,
)
models = [
    ("configs/msf/msf_sim_cpu.py", "checkpoints/msf_sim_cpu.safetensors"),
    ("configs/gaussian_fusion/gaussian_fusion_sim_cpu.py", "checkpoints/gaussian_fusion_sim_cpu.safetensors"),
]
num_sweeps = 3
sync_tolerance = 0.05
