"""Replay any ROS recording: topics auto-detected (every PointCloud2 a LiDAR, every image with a CameraInfo a camera,
named by their frame ids), MSF then GaussianFusion (both trained on the synthetic world).

    python tools/replay.py ../shared/data/ros/ouster_os1_64.mcap --config configs/replay/auto.py --out out/replay/ouster.mcap
"""
rosbag = dict(topics={}, ego_frame="base_link", pose_source="auto", reorder_window=0.2)
models = [
    ("configs/msf/msf_sim_cpu.py", "checkpoints/msf_sim_cpu.safetensors"),
    ("configs/gaussian_fusion/gaussian_fusion_sim_cpu.py", "checkpoints/gaussian_fusion_sim_cpu.safetensors"),
]
num_sweeps = 3
sync_tolerance = 0.05
