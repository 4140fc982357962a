"""GaussianFusion (NeurIPS 2025): BEV Gaussians fused from cameras and LiDAR, for end-to-end planning."""
