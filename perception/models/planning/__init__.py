"""Planning heads and baselines: GaussianFusion's cascade head, constant velocity, ego-status MLP."""
