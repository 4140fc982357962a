"""Batch inference on a local Ray (2 CPUs, one model actor): sharding, exactly-once output, resume, errors, CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

from perception.pipeline.batch import MANIFEST, BatchError, DataSpec, Shard, plan_shards, run_inference
from perception.structures import Sample
from tests.pipeline.conftest import CONFIG

ROOT = Path(__file__).resolve().parents[2]
SIM = "sim:seeds=0,frames=40"  # one sequence: a new seed costs seconds of world generation per worker


def infer(ckpt: Path, out: Path, data: DataSpec | str = SIM, **kw):
    spec = DataSpec.parse(data) if isinstance(data, str) else data
    kw = {"shard_size": 10, "batch_size": 4, "actors": 1, "progress": False, "log": lambda m: None, **kw}
    return run_inference(CONFIG, ckpt, spec, out, **kw)


def stats(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((out / "shards").glob("*.parquet"))}


def read_all(out: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = pa.concat_tables([pq.read_table(p) for p in sorted((out / "shards").glob("*.frames.parquet"))])
    boxes = pa.concat_tables([pq.read_table(p) for p in sorted((out / "shards").glob("shard-?????.parquet"))])
    return frames, boxes


def test_plan_shards():
    assert plan_shards(25, 10) == [Shard(0, 0, 10), Shard(1, 10, 20), Shard(2, 20, 25)]
    assert [s.name for s in plan_shards(25, 10)] == ["shard-00000", "shard-00001", "shard-00002"]
    assert plan_shards(0, 10) == [] and len(plan_shards(10, 10)) == 1
    with pytest.raises(ValueError):
        plan_shards(10, 0)


def test_data_spec():
    s = DataSpec.parse("sim:seeds=2-4,frames=7,cameras=0")
    assert s.root is None and s.sim == {"seeds": (2, 3, 4), "frames": 7, "render_cameras": False}
    assert DataSpec.parse("sim:seeds=1+5").sim["seeds"] == (1, 5)
    assert DataSpec.parse("kitti", root="x").source == "kitti"
    for bad, root in (("kitti", None), ("sim:fps=3", None), ("sim:seeds=1", "x"), ("lyft", None), ("sim:seeds=a-b", None)):
        with pytest.raises(ValueError):
            DataSpec.parse(bad, root=root)


def test_every_frame_once_then_resume_redoes_only_unfinished_shards(ray_local, ckpt, tmp_path):
    out = tmp_path / "preds"
    first = infer(ckpt, out, max_shards=2)  # stopped after two of four shards, as a crash would leave it
    assert first.written == ["shard-00000", "shard-00001"] and not first.complete
    before = stats(out)
    assert len(before) == 4

    with pytest.raises(BatchError, match="not empty"):
        infer(ckpt, out)  # no --resume
    with pytest.raises(BatchError, match="other settings"):
        infer(ckpt, out, resume=True, shard_size=20)

    second = infer(ckpt, out, resume=True)
    assert second.skipped == ["shard-00000", "shard-00001"]
    assert second.written == ["shard-00002", "shard-00003"] and second.complete
    after = stats(out)
    assert {k: after[k] for k in before} == before  # finished shards untouched (same inode, same mtime)

    frames, boxes = read_all(out)
    assert sorted(frames["frame_index"].to_pylist()) == list(range(40))  # every frame exactly once
    assert len(set(frames["token"].to_pylist())) == 40 and frames["error"].null_count == 40
    assert sum(frames["boxes"].to_pylist()) == boxes.num_rows > 0
    assert set(boxes["class"].to_pylist()) <= {"Car", "Pedestrian", "Cyclist"}
    assert set(boxes.column_names) >= {"token", "timestamp", "model", "class", "score", "x", "y", "z", "dx", "dy", "dz", "yaw"}
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and sum(e["rows"] for e in manifest["shards"].values()) == boxes.num_rows
    assert [r["written"] for r in manifest["runs"]] == [["shard-00000", "shard-00001"], ["shard-00002", "shard-00003"]]

    (out / "shards/shard-00002.parquet").unlink()  # a shard listed but lost: redone, the others not
    third = infer(ckpt, out, resume=True)
    assert third.written == ["shard-00002"] and third.complete
    assert {k: v for k, v in stats(out).items() if "00002" not in k} == {k: v for k, v in after.items() if "00002" not in k}
    frames, boxes2 = read_all(out)
    assert sorted(frames["frame_index"].to_pylist()) == list(range(40)) and boxes2.num_rows == boxes.num_rows

    assert infer(ckpt, out, resume=True).written == []  # nothing left to do


class _Flaky(Sequence[Sample]):
    """Sim frames where frame 3 fails to load and frame 5 has no LiDAR (the model raises on it)."""

    def __init__(self, inner: Sequence[Sample]) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        if i == 3:
            raise OSError("disk on fire")
        s = self.inner[i]
        return dataclasses.replace(s, frame=dataclasses.replace(s.frame, lidar={})) if i == 5 else s


@dataclass(frozen=True)
class FlakySpec(DataSpec):
    def open(self) -> Sequence[Sample]:
        return _Flaky(super().open())


def test_failed_frames_are_recorded_and_the_rest_go_through(ray_local, ckpt, tmp_path):
    spec = DataSpec.parse("sim:seeds=0,frames=40")
    res = infer(ckpt, tmp_path / "p", data=FlakySpec(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}),
                limit=8, shard_size=4)
    assert res.written == ["shard-00000", "shard-00001"] and res.failed == 2 and res.frames == 8
    frames, boxes = read_all(tmp_path / "p")
    errs = {i: e for i, e in zip(frames["frame_index"].to_pylist(), frames["error"].to_pylist()) if e}
    assert sorted(errs) == [3, 5] and "disk on fire" in errs[3] and errs[5].startswith("predict: ")
    assert sorted(set(boxes["frame_index"].to_pylist())) == [0, 1, 2, 4, 6, 7]
    entry = json.loads((tmp_path / "p" / MANIFEST).read_text())["shards"]["shard-00000"]
    assert entry["failed"] == 1 and entry["errors"][0]["index"] == 3


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/infer.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)


def test_cli_user_errors_exit_2_without_traceback(ckpt, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    r = tool(str(CONFIG), str(ckpt), "--data", SIM, "--out", str(busy))
    assert r.returncode == 2 and "not empty" in r.stderr and "--resume" in r.stderr and "Traceback" not in r.stderr

    from tools.infer import main

    cases = [([str(CONFIG), str(tmp_path / "nope.pth"), "--data", SIM], "checkpoint not found"),
             ([str(CONFIG), str(ckpt), "--data", "kitti", "--root", str(tmp_path / "none")], "not found"),
             ([str(CONFIG), str(ckpt), "--data", "kitti"], "needs --root")]
    for argv, msg in cases:
        with pytest.raises(SystemExit) as e:
            main([*argv, "--out", str(tmp_path / "o")])
        assert e.value.code == 2, argv
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
