"""NAVSIM's two blind baselines (Dauner et al., NeurIPS 2024 D&B, Table 2): they see only the ego status.

- ``constant_velocity``: NAVSIM's ConstantVelocityAgent, straight ahead at the current speed
  (optionally on an arc at the current yaw rate: constant turn rate and velocity).
- ``EgoStatusMLP``: NAVSIM's EgoStatusMLPAgent, an MLP from the ego status (velocity, acceleration,
  driving command one-hot) to the 8 future poses, trained with an L1 loss.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from perception.structures import Trajectory

STEPS, DT = 8, 0.5  # NAVSIM: 8 poses at 2 Hz over 4 s
COMMANDS = 4  # left, straight, right, unknown
STATUS_DIM = 4 + COMMANDS


def constant_velocity(speed: float, yaw_rate: float = 0.0, steps: int = STEPS, dt: float = DT) -> Trajectory:
    """``steps`` poses ``(x, y, heading)`` at ``dt`` keeping ``speed`` (m/s) and ``yaw_rate`` (rad/s)."""
    t = dt * np.arange(1, steps + 1)
    heading = yaw_rate * t
    if abs(yaw_rate) < 1e-6:
        x, y = speed * t, np.zeros_like(t)
    else:
        r = speed / yaw_rate
        x, y = r * np.sin(heading), r * (1 - np.cos(heading))
    return Trajectory(np.column_stack([x, y, heading]), t)


def ego_status(speed: float, acceleration: float, yaw_rate: float, command: int) -> np.ndarray:
    """NAVSIM's ego status ``[8]``: velocity (vx, vy), acceleration (ax, ay) in the ego frame and the
    driving command one-hot (0 left, 1 straight, 2 right, 3 unknown). The lateral acceleration of
    a car moving on an arc is ``speed * yaw_rate``; its lateral velocity is 0."""
    if not 0 <= command < COMMANDS:
        raise ValueError(f"ego_status: command must be in [0, {COMMANDS}), got {command}")
    out = np.zeros(STATUS_DIM, np.float32)
    out[:4] = (speed, 0.0, acceleration, speed * yaw_rate)
    out[4 + command] = 1.0
    return out


class EgoStatusMLP(nn.Module):
    """Ego status ``[B, 8]`` → poses ``[B, 8, 3]`` (x, y, heading), NAVSIM's layout (3 hidden layers of 512)."""

    def __init__(self, hidden: int = 512, steps: int = STEPS) -> None:
        super().__init__()
        self.steps = steps
        self.mlp = nn.Sequential(
            nn.Linear(STATUS_DIM, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, steps * 3),
        )

    def forward(self, status: torch.Tensor) -> torch.Tensor:
        return self.mlp(status).view(-1, self.steps, 3)

    @torch.no_grad()
    def plan(self, status: np.ndarray, dt: float = DT) -> Trajectory:
        """One ego status ``[8]`` → its :class:`Trajectory`."""
        poses = self(torch.as_tensor(status, dtype=torch.float32)[None])[0].double().numpy()
        return Trajectory(poses, dt * np.arange(1, self.steps + 1))


def train_ego_status_mlp(model: EgoStatusMLP, status: np.ndarray, poses: np.ndarray, epochs: int = 50,
                         lr: float = 1e-4, batch_size: int = 64, seed: int = 0) -> list[float]:
    """Fit ``model`` to ego statuses ``[N, 8]`` and expert poses ``[N, 8, 3]`` with Adam and an L1 loss
    (NAVSIM: lr 1e-4, batch 64). Returns the mean training loss of each epoch."""
    x = torch.as_tensor(status, dtype=torch.float32)
    y = torch.as_tensor(poses, dtype=torch.float32)
    if len(x) != len(y) or y.shape[1:] != (model.steps, 3):
        raise ValueError(f"train_ego_status_mlp: status {tuple(x.shape)} and poses {tuple(y.shape)} do not match")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    history = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = nn.functional.l1_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / len(x))
    model.eval()
    return history
