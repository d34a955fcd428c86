"""One mixed-control episode recorded twice: through the node graph and in-process.

The operator follows the same script in both (``OperatorConfig.script``): it takes both arms
at step 20, hands back after 40 steps (the arbiter ramps control back over 25 ticks), and
takes over again at step 150 for good, finishing the task. The graph path runs the real
processes over DDS (driver, policy server, arbiter, scripted operator, episode recorder) and
the recorder's bag is read back; the in-process path is the benchmark's ``run_rollout``. Both
must give the same authority timeline (up to the graph's transport delay of a few ticks and its
holds while the first chunk is computed), the same T_s (the step whose command reached
success), and the labels and masks the credit rule derives from that timeline. The graph's bag
also holds the arbiter's ticks after the episode ended, which must not become steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from habc_common import bag_format as bf
from habc_learner.core.bag_reader import read_episode
from habc_learner.core.episode import HANDBACK, HUMAN, NONE, POLICY
from habc_learner.core.labeling import (
    LabelingConfig,
    Source,
    label_episode,
    segment_controllers,
    window_action_mask,
)
from tests.nodes.conftest import NodeProcess, make_checkpoint

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

TASK = "transfer_cube"
SEED = 3  # the driver starts at seed 1; its resets before the two episodes move it to 2, 3
# The operator's takeover from step 150 finishes near step 575 (graph, measured); on the
# loaded machine the graph's once ran past 600, so the limit leaves room.
MAX_STEPS = 800
SCRIPT = ((20, 40), (150, -1))
HANDBACK_TICKS = 25
# Ticks: the arbiter hears the operator's deadman after transport and scheduling (up to 15
# measured on the loaded 2-core machine, with two graph test files running at once).
LAG = 25


def timeline(authority: np.ndarray) -> list[tuple[int, int, int]]:
    """(controller, start, stop) segments; a hold (NONE) the graph adds inside a segment (a
    tick the driver clamped or never reported, a late heartbeat) does not split it."""
    out: list[tuple[int, int, int]] = []
    for s in segment_controllers(authority):
        if s.controller == NONE:
            continue
        if out and out[-1][0] == s.controller:
            out[-1] = (s.controller, out[-1][1], s.stop)
        else:
            out.append((s.controller, s.start, s.stop))
    return out


def kinds(authority: np.ndarray) -> list[int]:
    out: list[int] = []
    for c, _a, _b in timeline(authority):
        if c != NONE and (not out or out[-1] != c):
            out.append(c)
    return out


def check_labels(ep: Any) -> dict[str, Any]:
    """The credit rule on this episode's own timeline; returns what both paths must share."""
    labels = label_episode(ep, LabelingConfig())
    segs = [s for s in timeline(ep.authority) if s[0] != NONE]
    ramp = next(s for s in segs if s[0] == HANDBACK)
    first = next(s for s in segs if s[0] == HUMAN)
    second = next(s for s in segs if s[0] == HUMAN and s[1] >= ramp[2])
    T = ep.length
    # The last takeover runs to the end: no policy step after it, nothing outcome-labeled.
    assert not (ep.authority[labels.suffix_start :] == POLICY).any()
    assert not labels.is_labeled.any()
    # Intervention windows: >= 10 of their 50 steps human (the ramp never counts).
    human_steps = (ep.authority == HUMAN).any(axis=1)
    for t in range(T):
        n = int(human_steps[t : t + 50].sum())
        assert (labels.source[t] == Source.INTERVENTION) == (n >= 10), t
    # The window anchored at the first takeover imitates exactly its human steps: never the
    # ramp, never the policy after it.
    a = first[1]
    mask = window_action_mask(ep, labels, a, 50)
    covered = np.arange(a, a + 50)
    want = human_steps[np.minimum(covered, T - 1)] & (covered < T)
    assert (mask.any(axis=1) == want).all()
    assert not mask[ramp[1] - a : ramp[2] - a].any()
    return {
        "kinds": kinds(ep.authority),
        "first_human": ramp[1] - first[1],
        # hand-back ticks of the ramp (a hold inside it pauses the ramp, it does not end it)
        "ramp": int((ep.authority[ramp[1] : ramp[2]] == HANDBACK).any(axis=1).sum()),
        "second_start": second[1],
        "authority": ep.authority,
        "T_s_is_last_step": ep.success_step == T - 1,
        "intervention_windows": int((labels.source == Source.INTERVENTION).sum()),
    }


def in_process(checkpoint: Path) -> Any:
    """The benchmark's rollout, through the driver's safety layer with the values the driver
    node runs with (config/driver.yaml: 30 rad/s joints, 10/s grippers, clamp)."""
    from arx_x5_driver.core.factory import make_backend
    from arx_x5_driver.core.safety import SafetyConfig, SafetyLayer, uniform_velocity
    from habc_policy.core.checkpoint import load_policy
    from habc_sim.core.operator import OperatorConfig, ScriptedOperator
    from habc_sim.core.rollouts import run_rollout

    operator = ScriptedOperator.for_backend(
        "sim", TASK, OperatorConfig(intervention_rate=0.0, script=SCRIPT)
    )
    with make_backend("sim", task=TASK, max_steps=MAX_STEPS) as robot:
        spec = robot.spec
        safety = SafetyLayer(
            SafetyConfig(
                action_names=spec.action_names,
                arm_slices=spec.arm_slices,
                low=spec.action_low,
                high=spec.action_high,
                max_velocity=uniform_velocity(spec.arm_slices, 30.0, 10.0),
                control_period_s=spec.control_period,
            )
        )
        r = run_rollout(
            robot,
            seed=SEED,
            policy=load_policy(checkpoint),
            operator=operator,
            episode_id="inproc",
            task=TASK,
            prompt=robot.prompt,
            bag_path=checkpoint.parent.parent / "inproc",
            handback_ticks=HANDBACK_TICKS,
            safety=safety,
        )
    assert r.success, r
    return read_episode(checkpoint.parent.parent / "inproc")


@pytest.fixture(scope="module")
def graph_bag(
    ros_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path]]:
    from habc_learner.graph_job import EpisodeRunner

    root = tmp_path_factory.mktemp("mixed_control")
    logs = root / "logs"
    logs.mkdir()
    ckpt = root / "ckpts" / "step_000000100"
    make_checkpoint(ckpt, learner_step=100, seed=0)
    procs = []
    runner = None
    try:
        procs.append(
            NodeProcess(
                "driver_node",
                ros_env,
                logs,
                cameras="",
                seed=SEED - 2,
                sim__task=TASK,
                sim__max_steps=MAX_STEPS,
            )
        )
        procs.append(NodeProcess("policy_server", ros_env, logs, checkpoint=str(ckpt)))
        procs.append(NodeProcess("arbiter_node", ros_env, logs, handback_ticks=HANDBACK_TICKS))
        procs.append(
            NodeProcess(
                "scripted_operator_node",
                ros_env,
                logs,
                task=TASK,
                intervention_rate=0.0,
                script=[v for pair in SCRIPT for v in pair],
                episode_steps=MAX_STEPS,
            )
        )
        procs.append(
            NodeProcess(
                "episode_recorder",
                ros_env,
                logs,
                bag_dir=str(root / "bags"),
                cameras="",
                min_free_gb=0.1,
            )
        )
        runner = EpisodeRunner(timeout_s=90.0)
        runner.wait_ready(timeout_s=120.0)
        # The operator node acts from its start, before any episode exists; the first episode
        # can inherit a deadman held from then. The second starts from a released pad.
        runner.run_episode(TASK)
        outcome = runner.run_episode(TASK)
        assert outcome.outcome == "success", outcome
        yield root / "bags" / outcome.episode_id, ckpt
    finally:
        if runner is not None:
            runner.close()
        for p in procs:
            p.stop()
        if any("Traceback" in p.log() for p in procs):
            print("\n".join(f"--- {p.name}\n{p.log()[-2000:]}" for p in procs))


def test_graph_and_in_process_record_the_same_mixed_control_episode(
    graph_bag: tuple[Path, Path],
) -> None:
    bag, ckpt = graph_bag
    graph = read_episode(bag)
    local = in_process(ckpt)
    g, loc = check_labels(graph), check_labels(local)
    # The same timeline: policy, takeover, ramp, policy, takeover to the end.
    assert g["kinds"] == loc["kinds"] == [POLICY, HUMAN, HANDBACK, POLICY, HUMAN]
    assert loc["first_human"] == 40 and abs(g["first_human"] - 40) <= LAG
    assert g["ramp"] == loc["ramp"] == HANDBACK_TICKS
    assert loc["second_start"] == 150 and abs(g["second_start"] - 150) <= LAG
    # T_s: the step whose command the simulator saw reach success, in both.
    assert g["T_s_is_last_step"] and loc["T_s_is_last_step"]
    # The arbiter kept ticking until the operator's mark: those ticks are in the bag but are
    # not steps of the episode.
    assert int(bf.read_custom_data(bag)[bf.KEY_NUM_STEPS]) > graph.length
    # (each path's windows follow the rule exactly, checked above; their counts differ only
    # by the graph's clamped and late ticks)
    assert (
        abs(g["intervention_windows"] - loc["intervention_windows"])
        <= 0.15 * loc["intervention_windows"]
    )
    # The safety layer ran in both; in the graph it may also clamp a takeover's first ticks,
    # where the transport delay lets the operator's command jump further: such steps are
    # nobody's (NONE), never more of them in-process than in the graph.
    none = [int((p["authority"] == NONE).all(axis=1).sum()) for p in (loc, g)]
    assert none[0] <= none[1], none
