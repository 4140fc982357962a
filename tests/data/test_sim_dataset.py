"""The synthetic world on disk: tools/create_data.py sim writes it, SimReader and mmdet3d infos read it back."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from perception.data import open_reader
from perception.data.common import DataError
from perception.data.mmdet3d_infos import Mmdet3dInfoReader
from perception.data.sim import LIDAR, LIDAR_FIELDS, SimReader, decode_depth, encode_depth
from perception.geometry.cameras import KannalaBrandtCamera, PinholeCamera
from perception.geometry.se3 import SE3
from perception.structures import Boxes3D, Calibration
from tools import create_data

SEED, SEQUENCES, FRAMES = 0, 2, 3
ARGS = ["sim", "--sequences", str(SEQUENCES), "--frames", str(FRAMES), "--seed", str(SEED), "--rigs", "navsim",
        "--mmdet3d-infos", "--split", "0.5", "0.5", "0"]


def _create(out: Path, workers: int) -> Path:
    assert create_data.main([*ARGS, "--out", str(out), "--workers", str(workers)]) == 0
    return out


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return _create(tmp_path_factory.mktemp("sim") / "w2", workers=2)


@pytest.fixture(scope="module")
def sim0():
    """The first sequence straight from the simulator."""
    from perception.sim.scene import SimConfig, SimSequence

    seq = SimSequence(SEED, SimConfig(frames=FRAMES, rigs=("navsim",)))
    return [seq[k] for k in range(FRAMES)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_workers_do_not_change_a_byte(ds, tmp_path):
    one = _files(_create(tmp_path / "w1", workers=1))
    two = _files(ds)
    assert sorted(one) == sorted(two)
    assert not any(".tmp" in name for name in one)  # atomic writes left nothing behind
    assert {n for n in one if n.endswith(".bin")} == {f"seq_{s:05d}/lidar/{k:04d}.bin" for s in (0, 1) for k in range(FRAMES)}
    differ = [n for n in one if one[n] != two[n]]
    assert differ == []  # lidar, labels, images, maps, json and pkls alike


def test_layout_and_dataset_description(ds):
    d = json.loads((ds / "dataset.json").read_text())
    assert d["format"] == "perception-sim" and d["format_version"] == 1
    assert d["config"]["frames"] == FRAMES and d["config"]["rigs"] == ["navsim"]
    assert d["box_classes"] == ["Car", "Pedestrian", "Cyclist"] and d["class_names"][-1] == "sky"
    seq = ds / "seq_00000"
    calib = json.loads((seq / "calib.json").read_text())
    assert set(calib["cameras"]) == {"CAM_L0", "CAM_F0", "CAM_R0"}
    assert calib["cameras"]["CAM_F0"]["model"]["model"] == "PinholeCamera" and calib["cameras"]["CAM_F0"]["depth_kind"] == "z"
    frames = json.loads((seq / "frames.json").read_text())["frames"]
    assert [f["token"] for f in frames] == [f"sim00000_{k:04d}" for k in range(FRAMES)]
    assert frames[1]["files"]["cameras"]["CAM_F0"] == "camera/CAM_F0/0001.jpg"
    for rel in ("lidar/0002.bin", "camera/CAM_L0/0002.jpg", "depth/CAM_R0/0002.png", "semantic/CAM_F0/0002.png",
                "bev/0002.png", "labels/0002.json"):
        assert (seq / rel).is_file(), rel
    assert (seq / "lidar/0000.bin").stat().st_size % (6 * 4) == 0


def test_reader_matches_the_simulator(ds, sim0):
    reader = SimReader(ds, "train")
    assert len(reader) == FRAMES and reader.sequences == ["seq_00000"]
    for a, b in zip(sim0, reader):
        fa, fb = a.frame, b.frame
        assert fb.token == fa.token and fb.timestamp == fa.timestamp and fb.source == "sim"
        assert np.array_equal(fb.lidar[LIDAR].points, fa.lidar[LIDAR].points)  # bit-exact
        assert fb.lidar[LIDAR].fields == fa.lidar[LIDAR].fields == LIDAR_FIELDS and fb.lidar[LIDAR].frame_id == LIDAR
        assert fb.calib.ego_from_sensor == fa.calib.ego_from_sensor and dict(fb.calib.cameras) == dict(fa.calib.cameras)
        assert fb.ego_pose == fa.ego_pose and fb.missing == ()
        assert {k: fb.meta[k] for k in fa.meta} == dict(fa.meta)
        assert set(fb.cameras) == set(fa.cameras) == {"CAM_L0", "CAM_F0", "CAM_R0"}
        ta, tb = a.targets, b.targets
        for cam in fa.cameras:
            err = np.abs(fb.cameras[cam].image.astype(np.int16) - fa.cameras[cam].image)
            assert err.mean() < 4 and fb.cameras[cam].camera == fa.cameras[cam].camera  # JPEG q92
            da, db = ta.depth[cam], tb.depth[cam]
            assert db.kind == da.kind and np.array_equal(db.valid, da.valid)
            assert np.abs(db.depth - da.depth).max() <= 1 / 256
            assert np.array_equal(tb.semantic[cam], ta.semantic[cam]) and tb.semantic[cam].dtype == np.uint8
        assert np.array_equal(tb.bev_semantic, ta.bev_semantic)
        assert tb.boxes.tensor.dtype == np.float32 and np.array_equal(tb.boxes.tensor, ta.boxes.tensor)
        assert np.array_equal(tb.boxes.labels, ta.boxes.labels) and np.array_equal(tb.boxes.track_ids, ta.boxes.track_ids)
        assert tb.boxes.class_names == ta.boxes.class_names and tb.boxes.frame_id == "ego"
        assert set(tb.attributes) == set(ta.attributes)
        for k, v in ta.attributes.items():
            assert tb.attributes[k].dtype == v.dtype and np.array_equal(tb.attributes[k], v), k
        assert np.array_equal(tb.ego_future.poses, ta.ego_future.poses)
        assert np.array_equal(tb.ego_future.timestamps, ta.ego_future.timestamps)
        assert np.array_equal(tb.agent_futures, ta.agent_futures) and tb.driving_command == ta.driving_command
        assert tb.meta["bev_grid"] == ta.meta["bev_grid"] and tb.meta["classes"] == ta.meta["classes"]
        assert tb.meta["commands"] == ta.meta["commands"]


def test_depth_encoding_is_kitti_and_keeps_tiny_depths():
    d = np.array([[0.0, 1e-4, 1.0, 12.3456], [255.99, 300.0, 0.5 / 256, 7.0]], np.float32)
    png = encode_depth(d)
    assert png.dtype == np.uint16 and png[0, 0] == 0 and png[0, 2] == 256 and png[1, 1] == 65535
    back = decode_depth(png)
    assert ((back > 0) == (d > 0)).all()
    ok = d < 255.99
    assert np.abs(back - d)[ok].max() <= 1 / 256


def test_splits_are_by_sequence(ds):
    d = json.loads((ds / "dataset.json").read_text())
    splits = d["splits"]
    assert splits == {"train": ["seq_00000"], "val": ["seq_00001"], "test": []}
    readers = {s: SimReader(ds, s, load_images=False) for s in ("train", "val", "test", "all")}
    assert [len(readers[s]) for s in ("train", "val", "test", "all")] == [FRAMES, FRAMES, 0, 2 * FRAMES]
    seqs = {s: {r.frame.meta["sequence"] for r in readers[s]} for s in ("train", "val")}
    assert seqs == {"train": {0}, "val": {1}}
    assert readers["val"][0].frame.cameras == {} and set(readers["val"][0].frame.calib.cameras) == {"CAM_L0", "CAM_F0", "CAM_R0"}
    assert create_data.split_counts(10, [0.8, 0.1, 0.1]) == [8, 1, 1]
    assert create_data.split_counts(2, [0.8, 0.1, 0.1]) == [2, 0, 0]
    assert create_data.split_counts(7, [1, 1, 1]) == [3, 2, 2]
    names = [f"seq_{i:05d}" for i in range(9)]
    parts = create_data.split_sequences(names, [0.6, 0.2, 0.2])
    assert sum(parts.values(), []) == names  # every sequence once, in order
    with pytest.raises(ValueError):
        create_data.split_counts(3, [0.5, -0.1, 0.6])


def test_open_reader_sim(ds):
    r = open_reader("sim", ds, split="val")
    assert isinstance(r, SimReader) and len(r) == FRAMES and r[0].frame.token == "sim00001_0000"
    with pytest.raises(ValueError, match="split"):
        open_reader("sim", ds, split="training")


def test_mmdet3d_infos_round_trip(ds, sim0):
    infos = {s: pickle.loads((ds / f"sim_infos_{s}.pkl").read_bytes()) for s in ("train", "val", "test")}
    assert infos["train"]["metainfo"]["categories"] == {"Car": 0, "Pedestrian": 1, "Cyclist": 2}
    assert [len(i["data_list"]) for i in infos.values()] == [FRAMES, FRAMES, 0]
    info = infos["train"]["data_list"][0]
    assert info["lidar_points"]["lidar_path"] == "seq_00000/lidar/0000.bin" and info["lidar_points"]["num_pts_feats"] == 6
    assert info["images"]["CAM_F0"]["img_path"] == "seq_00000/camera/CAM_F0/0000.jpg"
    assert np.asarray(info["images"]["CAM_F0"]["cam2img"]).shape == (3, 3) and "fisheye_images" not in info
    reader = Mmdet3dInfoReader(ds / "sim_infos_train.pkl", dataset="nuscenes", fields=LIDAR_FIELDS)
    assert reader.class_names == ("Car", "Pedestrian", "Cyclist")
    for a, b in zip(sim0, reader):
        assert np.array_equal(b.frame.points.points, a.frame.points.points) and b.frame.points.fields == LIDAR_FIELDS
        assert b.frame.token == a.frame.token and b.frame.timestamp == a.frame.timestamp
        assert np.allclose(b.frame.ego_pose.world_from_ego.matrix, a.frame.ego_pose.world_from_ego.matrix, atol=1e-12)
        for cam, img in a.frame.cameras.items():
            assert np.allclose(b.frame.calib.ego_from_sensor[cam].matrix, a.frame.calib.ego_from_sensor[cam].matrix, atol=1e-9)
            assert b.frame.calib.cameras[cam] == img.camera and b.frame.cameras[cam].image.shape == img.image.shape
        ta, tb = a.targets.boxes, b.targets.boxes  # tb: LiDAR-frame boxes moved back into ego through lidar2ego
        assert tb.frame_id == "ego" and tb.tensor.shape == ta.tensor.shape and len(ta) > 0
        diff = tb.tensor - ta.tensor
        diff[:, 6] = np.angle(np.exp(1j * diff[:, 6]))  # yaw ±pi is one heading
        assert np.abs(diff).max() < 1e-4
        assert np.array_equal(tb.labels, ta.labels)
        assert np.array_equal(b.targets.attributes["num_lidar_pts"], a.targets.attributes["num_lidar_pts"])
        assert np.array_equal(b.targets.attributes["bbox_3d_isvalid"], a.targets.attributes["visible"])
    assert open_reader("nuscenes", ds, fields=LIDAR_FIELDS).info_path.name == "sim_infos_train.pkl"


def test_fisheyes_stay_out_of_mmdet3d_images():
    """cam2img cannot describe a fisheye: it goes to ``fisheye_images`` with its model instead."""
    kb = KannalaBrandtCamera(64, 64, 20.0, 20.0, 31.5, 31.5, 0.02, -0.005)
    pin = PinholeCamera(64, 48, 50.0, 50.0, 31.5, 23.5)
    lidar = SE3.from_rt(np.eye(3), [1.3, 0.0, 1.85])
    look = SE3.from_rt(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), [2.0, 0.0, 1.0])
    calib = Calibration({LIDAR: lidar, "CAM_F0": look, "FISHEYE_FRONT": look}, {"CAM_F0": pin, "FISHEYE_FRONT": kb})
    entry = {"token": "t", "timestamp": 0.1, "ego_pose": np.eye(4).tolist(),
             "files": {"lidar": "lidar/0000.bin", "cameras": {"CAM_F0": "camera/CAM_F0/0000.jpg",
                                                              "FISHEYE_FRONT": "camera/FISHEYE_FRONT/0000.jpg"}}}
    boxes = Boxes3D(np.array([[10.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.3, 2.0, 0.5]], np.float32), [0], ("Car", "Pedestrian", "Cyclist"),
                    "ego", [7])
    labels = {"boxes": boxes, "attributes": {"num_lidar_pts": np.array([12]), "visible": np.array([True])}}
    info = create_data._info_for_frame("seq_00000", calib, entry, labels, 0)
    assert set(info["images"]) == {"CAM_F0"} and set(info["fisheye_images"]) == {"FISHEYE_FRONT"}
    fe = info["fisheye_images"]["FISHEYE_FRONT"]
    assert fe["camera_model"]["model"] == "KannalaBrandtCamera" and "cam2img" not in fe
    assert np.allclose(fe["lidar2cam"], calib.transform("FISHEYE_FRONT", LIDAR).matrix)
    inst = info["instances"][0]
    assert np.allclose(inst["bbox_3d"], [8.7, 1.0, -1.85, 4.0, 2.0, 1.5, 0.3], atol=1e-6)  # LiDAR frame, bottom centre
    assert inst["velocity"] == pytest.approx([2.0, 0.5]) and inst["num_lidar_pts"] == 12 and inst["track_id"] == 7


def test_mmdet3d_loads_the_infos(ds):
    """mmdet3d's own dataset class and pipeline read the pkl (points, boxes, the three pinhole views)."""
    from mmdet3d.datasets import Det3DDataset
    from mmdet3d.utils import register_all_modules

    register_all_modules(init_default_scope=False)

    class SimDataset(Det3DDataset):
        METAINFO = {"classes": ("Car", "Pedestrian", "Cyclist")}

    dataset = SimDataset(
        data_root=str(ds), ann_file="sim_infos_train.pkl", data_prefix=dict(pts="", img=""), box_type_3d="LiDAR",
        modality=dict(use_lidar=True, use_camera=True),
        pipeline=[dict(type="mmdet3d.LoadPointsFromFile", coord_type="LIDAR", load_dim=6, use_dim=[0, 1, 2, 3]),
                  dict(type="mmdet3d.LoadAnnotations3D", with_bbox_3d=True, with_label_3d=True),
                  dict(type="mmdet3d.LoadMultiViewImageFromFiles", num_views=3),
                  dict(type="mmdet3d.Pack3DDetInputs", keys=["points", "gt_bboxes_3d", "gt_labels_3d", "img"])],
    )
    assert len(dataset) == FRAMES
    item = dataset[0]
    raw = pickle.loads((ds / "sim_infos_train.pkl").read_bytes())["data_list"][0]
    assert item["inputs"]["points"].shape[1] == 4 and tuple(item["inputs"]["img"].shape) == (3, 3, 360, 640)
    gt = item["data_samples"].gt_instances_3d
    packed = getattr(gt.bboxes_3d, "tensor", gt.bboxes_3d)  # LiDARInstance3DBoxes or its tensor
    assert np.allclose(packed.numpy(), [i["bbox_3d"] for i in raw["instances"]], atol=1e-5)
    assert gt.labels_3d.tolist() == [i["bbox_label_3d"] for i in raw["instances"]]


# -- errors name the file ---------------------------------------------------------------------------------
@pytest.fixture
def copy(ds, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(ds, out, ignore=shutil.ignore_patterns("*.pkl"))
    return out


def test_truncated_points_name_the_file(copy):
    path = copy / "seq_00000" / "lidar" / "0001.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    reader = SimReader(copy, "train", load_images=False)
    reader[0]
    with pytest.raises(DataError, match="truncated") as e:
        reader[1]
    assert str(path) in str(e.value)


def test_missing_json_names_the_file(copy):
    (copy / "seq_00001" / "frames.json").unlink()
    SimReader(copy, "train")  # the train split does not touch seq_00001
    with pytest.raises(DataError, match="frames.json") as e:
        SimReader(copy, "all")
    assert str(copy / "seq_00001" / "frames.json") in str(e.value)
    (copy / "seq_00000" / "labels" / "0002.json").unlink()
    with pytest.raises(DataError, match=r"labels.0002\.json"):
        SimReader(copy, "train")[2]
    (copy / "seq_00000" / "calib.json").write_text('{"ego_from_sensor": {\n  "LIDAR_TOP": [1, 2')
    with pytest.raises(DataError, match=r"calib\.json:2"):
        SimReader(copy, "train")[0]
    (copy / "dataset.json").unlink()
    with pytest.raises(DataError, match="dataset.json"):
        open_reader("sim", copy)


def test_broken_maps_name_the_file(copy):
    depth = copy / "seq_00000" / "depth" / "CAM_F0" / "0000.png"
    depth.write_bytes(depth.read_bytes()[:200])
    with pytest.raises(DataError, match=r"depth.CAM_F0.0000\.png"):
        SimReader(copy, "train", load_images=False)[0]
    (copy / "seq_00000" / "bev" / "0001.png").unlink()
    with pytest.raises(DataError, match=r"bev.0001\.png: BEV map not found"):
        SimReader(copy, "train", load_images=False)[1]


def test_missing_camera_image_is_recorded_not_fatal(copy):
    img = copy / "seq_00000" / "camera" / "CAM_L0" / "0002.jpg"
    img.unlink()
    reader = SimReader(copy, "train")
    s = reader[2]
    assert s.frame.missing == ("CAM_L0",) and set(s.frame.cameras) == {"CAM_F0", "CAM_R0"}
    assert "CAM_L0" in s.frame.calib.cameras and "CAM_L0" in s.targets.depth  # the rig and ground truth stay
    assert reader.missing_counts == {"CAM_L0": 1}
    with pytest.raises(DataError, match=r"CAM_L0.0002\.jpg"):
        SimReader(copy, "train", strict=True)[2]
