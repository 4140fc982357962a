"""Training and evaluation engine on mmengine: runner, checkpoints, hooks, launchers."""
