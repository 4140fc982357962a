"""DatasetScheduleHook: a curriculum that changes the training dataset's attributes between epochs."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from perception.engine.hooks import DatasetScheduleHook
from perception.models.calibformer.data import CalibSimDataset


def _runner(dataset, epoch: int, persistent: bool = False):
    loader = SimpleNamespace(dataset=dataset, persistent_workers=persistent)
    return SimpleNamespace(epoch=epoch, train_dataloader=loader, logger=logging.getLogger("test"))


def test_schedule_applies_the_latest_entry_at_each_epoch_and_on_resume():
    ds = CalibSimDataset(ranges=[(10.0, 0.25), (1.5, 0.04)])
    hook = DatasetScheduleHook({3: dict(ranges=[(1.5, 0.25)]), 5: dict(ranges=[(4, 0.1)])})
    seen = []
    for epoch in range(6):  # runner.epoch is 0-based: epochs 1..6
        hook.before_train_epoch(_runner(ds, epoch))
        seen.append(ds.ranges)
    assert seen == [[(10.0, 0.25), (1.5, 0.04)]] * 2 + [[(1.5, 0.25)]] * 2 + [[(4.0, 0.1)]] * 2
    resumed, fresh = DatasetScheduleHook({3: dict(ranges=[(1.5, 0.25)])}), CalibSimDataset()
    resumed.before_train_epoch(_runner(fresh, 7))  # a run resumed at epoch 8 gets the entry of epoch 3
    assert fresh.ranges == [(1.5, 0.25)]


def test_schedule_errors_are_clear():
    ds = CalibSimDataset()
    with pytest.raises(AttributeError, match="no attribute 'rnages'"):
        DatasetScheduleHook({1: dict(rnages=[(1.0, 0.1)])}).before_train_epoch(_runner(ds, 0))
    with pytest.raises(ValueError, match="persistent workers"):
        DatasetScheduleHook({1: dict(ranges=[(1.0, 0.1)])}).before_train_epoch(_runner(ds, 0, persistent=True))
    with pytest.raises(ValueError, match="1-based"):
        DatasetScheduleHook({0: dict(ranges=[(1.0, 0.1)])})
    with pytest.raises(ValueError, match="non-empty"):
        DatasetScheduleHook({1: dict(ranges=[])}).before_train_epoch(_runner(ds, 0))
