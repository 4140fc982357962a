"""The PDM score on hand-built scenes (one per sub-metric) and on the synthetic world's expert drives."""
import numpy as np
import pytest

from perception.eval.pdms import (
    AgentClass, EgoGeometry, EgoStatus, PDMResult, PlanningScene, mean_scores, pdm_score, simulate,
)
from perception.geometry.grid import BevGrid
from perception.models.planning.baselines import constant_velocity
from perception.structures import Trajectory

EGO = EgoGeometry(length=4.8, width=2.0, rear_overhang=1.0, wheelbase=2.9)
GRID = BevGrid(-40.0, -20.0, 200.0, 20.0, 0.25)
T = 0.5 * np.arange(1, 9)
STEPS = 50  # agents over 4.9 s at 10 Hz


def plan_x(x: np.ndarray, y: np.ndarray | None = None) -> Trajectory:
    """A plan from x (and y) at the 8 NAVSIM times; heading along the path."""
    y = np.zeros(8) if y is None else y
    d = np.diff(np.concatenate([[[0.0, 0.0]], np.column_stack([x, y])]), axis=0)
    h = np.where(np.hypot(d[:, 0], d[:, 1]) > 1e-6, np.arctan2(d[:, 1], d[:, 0]), 0.0)
    return Trajectory(np.column_stack([x, y, h]), T)


def braking(v0: float, decel: float, t: np.ndarray = T) -> np.ndarray:
    """Distance covered at ``t`` braking from ``v0`` at ``decel`` to a stop."""
    tt = np.minimum(t, v0 / decel)
    return v0 * tt - 0.5 * decel * tt ** 2


def track(x0: float, y0: float, heading: float = 0.0, speed: float = 0.0, size=(4.5, 1.9)) -> np.ndarray:
    """One object's boxes ``[STEPS, 5]`` moving at constant velocity."""
    t = 0.1 * np.arange(STEPS)
    return np.column_stack([x0 + speed * np.cos(heading) * t, y0 + speed * np.sin(heading) * t,
                            np.full(STEPS, heading), np.full(STEPS, size[0]), np.full(STEPS, size[1])])


def scene(ego: EgoStatus, expert: Trajectory, tracks=(), classes=()) -> PlanningScene:
    """A straight road: drivable for |y| <= 4 m, the route along y = 0."""
    drivable = np.abs(GRID.cell_centers()[..., 1]) <= 4.0
    agents = np.stack(tracks, axis=1) if tracks else np.zeros((STEPS, 0, 5))
    return PlanningScene(ego, EGO, agents, np.ones(agents.shape[:2], bool), np.array(classes, np.int64),
                         drivable, GRID, np.array([[-40.0, 0.0], [200.0, 0.0]]), expert)


def test_clean_drive_scores_one():
    plan = constant_velocity(10.0)
    r = pdm_score(plan, scene(EgoStatus(10.0), plan))
    assert (r.nc, r.dac, r.ttc, r.ep, r.comfort, r.pdms) == (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert r.progress == pytest.approx(40.0, abs=0.05)
    states = simulate(plan, EgoStatus(10.0), EGO)
    assert states.shape == (41, 6) and np.allclose(states[:, 3], 10.0)


def test_at_fault_collision_zeroes_the_score():
    plan = constant_velocity(10.0)
    stopped_car = track(25.0, 0.0)
    r = pdm_score(plan, scene(EgoStatus(10.0), plan, [stopped_car], [AgentClass.VEHICLE]))
    assert r.nc == 0.0 and r.pdms == 0.0
    pole = track(25.0, 0.0, size=(0.3, 0.3))  # a static object: half the penalty
    r = pdm_score(plan, scene(EgoStatus(10.0), plan, [pole], [AgentClass.STATIC]))
    assert r.nc == 0.5 and r.ttc == 0.0


def test_rear_ended_is_not_at_fault():
    stand = plan_x(np.zeros(8))
    from_behind = track(-20.0, 0.0, speed=6.0)  # drives through the ego from behind
    r = pdm_score(stand, scene(EgoStatus(0.0), stand, [from_behind], [AgentClass.VEHICLE]))
    assert (r.nc, r.ttc, r.ep, r.pdms) == (1.0, 1.0, 1.0, 1.0)  # stopped ego: not at fault, no TTC
    slow = constant_velocity(2.0)
    faster = track(-15.0, 0.0, speed=9.0)
    r = pdm_score(slow, scene(EgoStatus(2.0), slow, [faster], [AgentClass.VEHICLE]))
    assert (r.nc, r.ttc, r.pdms) == (1.0, 1.0, 1.0)  # moving ego hit at its rear: still not at fault
    oncoming = track(40.0, 0.0, np.pi, 9.0)  # the same car head-on: at fault
    assert pdm_score(slow, scene(EgoStatus(2.0), slow, [oncoming], [AgentClass.VEHICLE])).nc == 0.0


def test_leaving_the_drivable_area():
    plan = plan_x(10.0 * T, 6.0 * (1 - np.cos(np.pi * T / 4)) / 2)  # drifts 6 m left, off the road
    r = pdm_score(plan, scene(EgoStatus(10.0), constant_velocity(10.0)))
    assert r.dac == 0.0 and r.pdms == 0.0 and r.nc == 1.0


def test_hard_brake_is_uncomfortable():
    plan = plan_x(braking(15.0, 7.5))  # 15 m/s to a stop in 2 s
    r = pdm_score(plan, scene(EgoStatus(15.0), plan))
    assert (r.nc, r.dac, r.ttc, r.ep, r.comfort) == (1.0, 1.0, 1.0, 1.0, 0.0)
    assert r.pdms == pytest.approx(10 / 12)
    gentle = plan_x(braking(15.0, 2.0))
    assert pdm_score(gentle, scene(EgoStatus(15.0, -2.0), gentle)).comfort == 1.0


def test_swerve_is_uncomfortable():
    plan = plan_x(12.0 * T, 3.0 * np.sin(np.pi * T))  # left-right slalom within the road
    r = pdm_score(plan, scene(EgoStatus(12.0), constant_velocity(12.0)))
    assert r.dac == 1.0 and r.comfort == 0.0


def test_standing_still_makes_no_progress():
    expert = plan_x(1.25 * T ** 2)  # 0 → 10 m/s, 20 m in 4 s
    r = pdm_score(plan_x(np.zeros(8)), scene(EgoStatus(0.0), expert))
    assert r.reference_progress == pytest.approx(20.0) and r.ep == 0.0
    assert r.pdms == pytest.approx(7 / 12)
    half = pdm_score(plan_x(0.625 * T ** 2), scene(EgoStatus(0.0), expert))
    assert half.ep == pytest.approx(0.5, abs=0.03)


def test_ttc_violation_without_collision():
    # braking at 3 m/s² from 9 m/s to stop 0.6 m short of a stopped car: never touches it, but at
    # constant speed it would within 0.9 s
    plan = plan_x(braking(9.0, 3.0))
    car_x = 13.5 + (EGO.length - EGO.rear_overhang) + 0.6 + 4.5 / 2
    r = pdm_score(plan, scene(EgoStatus(9.0, -3.0), plan, [track(car_x, 0.0)], [AgentClass.VEHICLE]))
    assert (r.nc, r.dac, r.ttc, r.ep, r.comfort) == (1.0, 1.0, 0.0, 1.0, 1.0)
    assert r.pdms == pytest.approx(7 / 12)
    # the same car in the next lane is no threat
    r = pdm_score(plan, scene(EgoStatus(9.0, -3.0), plan, [track(car_x, 3.5)], [AgentClass.VEHICLE]))
    assert r.ttc == 1.0


def test_mean_and_validation():
    rs = [PDMResult(1, 1, 1, 1, 1, 1.0, 10, 10), PDMResult(0, 1, 1, 1, 1, 0.0, 5, 10)]
    m = mean_scores(rs)
    assert m["pdms"] == 0.5 and m["nc"] == 0.5 and m["progress"] == 7.5
    with pytest.raises(ValueError, match="steps"):
        PlanningScene(EgoStatus(0.0), EGO, np.zeros((10, 0, 5)), np.ones((10, 0), bool), np.zeros(0),
                      np.ones(GRID.shape, bool), GRID, np.zeros((2, 2)), plan_x(np.zeros(8)))


@pytest.fixture(scope="module")
def sim_scenes():
    from perception.sim.planning import planning_scene
    from perception.sim.scene import SimConfig, SimSequence

    seq = SimSequence(1, SimConfig(frames=40, layout="curve", render_cameras=False))
    return [planning_scene(seq, k) for k in range(0, 40, 4)]


def test_expert_scores_high_in_the_sim(sim_scenes):
    expert = [pdm_score(s.expert, s) for s in sim_scenes]
    assert all(r.nc == 1.0 and r.dac == 1.0 for r in expert)
    assert mean_scores(expert)["pdms"] >= 0.95
    # blind constant velocity leaves this curve: the score tells the two apart
    cv = [pdm_score(constant_velocity(s.ego.speed), s) for s in sim_scenes]
    assert mean_scores(cv)["pdms"] < mean_scores(expert)["pdms"] - 0.2
    s = sim_scenes[0]
    (i, j), = s.grid.index(np.zeros((1, 2)))[0]
    assert s.agents.shape[0] == 50 and s.drivable[i, j] and (s.agent_class == AgentClass.STATIC).any()
