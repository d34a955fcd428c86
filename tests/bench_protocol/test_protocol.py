"""The paper-protocol harness, scaled down: runs end to end, writes its report, and resumes.

The full run is a benchmark (``bench/bench_protocol.py``); this configuration (3 demos, one
round of 3 rollouts, a few dozen gradient steps, 2 evaluation episodes, one seed, three
step-1 methods and both step-2 methods) only proves the pipeline never rots: demos → bags →
bag reader → SFT → rollouts with scripted takeovers → bags → training → evaluation → records
→ tables and figures, and that a second invocation does no new work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sim, pytest.mark.slow]

SMOKE = [
    "--task", "transfer_cube",
    "--seeds", "0",
    "--methods", "sft", "imit_recap", "habc",
    "--demos", "3",
    "--demo-noise", "0",
    "--sft-steps", "30",
    "--sft-patience", "0",
    "--rounds", "1",
    "--rollouts", "3",
    "--round-steps", "20",
    "--eval-episodes", "2",
    "--batch-size", "32",
    "--warmup-steps", "5",
    "--step2-rounds", "1",
    "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("gym_aloha")
    from habc_learner.protocol import build_parser, config_from_args, run_protocol

    root = tmp_path_factory.mktemp("protocol")
    argv = [*SMOKE, "--work", str(root / "work"), "--out", str(root / "out")]
    cfg = config_from_args(build_parser().parse_args(argv), "habc-protocol " + " ".join(argv))
    first, report = run_protocol(cfg)
    second, _ = run_protocol(cfg)
    return {"cfg": cfg, "first": first, "second": second, "report": report, "root": root}


def test_first_invocation_runs_every_stage(smoke: dict) -> None:
    c = smoke["first"]
    assert c.demos == 3
    # sft round 1 needs no rollouts; imit_recap and habc share the SFT policy's round-1
    # rollouts; step 2 (habc, habc_ir) shares the habc round-1 policy's.
    assert c.rollouts == 3 + 3
    assert c.train_steps == 30 + 3 * 20 + 2 * 20
    assert c.rounds_done == 1 + 3 + 2
    assert c.eval_episodes == 2 * 6
    assert c.failures == 0


def test_second_invocation_does_no_new_work(smoke: dict) -> None:
    c = smoke["second"]
    assert (c.demos, c.rollouts, c.train_steps, c.eval_episodes, c.rounds_done) == (0,) * 5
    assert c.rounds_skipped == 6


def test_round_records_and_bags(smoke: dict) -> None:
    from habc_learner.core.bag_reader import read_episodes

    seed_dir = smoke["cfg"].task_dir() / "seed0"
    for method, k in (
        ("sft_start", 0),
        ("sft", 1),
        ("imit_recap", 1),
        ("habc", 1),
        ("habc", 2),
        ("habc_ir", 2),
    ):
        rec = json.loads((seed_dir / method / f"round_{k:02d}.json").read_text())
        assert rec["method"] == method and rec["round"] == k
        assert len(rec["eval"]["episodes"]) == 2
        assert 0.0 <= rec["eval"]["success_rate"] <= 1.0
        assert Path(rec["checkpoint"]).is_dir()
    habc_ir = json.loads((seed_dir / "habc_ir" / "round_02.json").read_text())
    assert habc_ir["step"] == 2 and habc_ir["method_config"]["ir_from_round"] == 1
    assert habc_ir["producers"][-1] == "habc_r1"  # step 2 starts from the HABC policy
    assert habc_ir["learner_step"] == 30 + 2 * 20
    habc = json.loads((seed_dir / "habc" / "round_01.json").read_text())
    assert "calibration" in habc["analysis"]["store"]
    assert "gate" in habc["analysis"]["store"]
    recap = json.loads((seed_dir / "imit_recap" / "round_01.json").read_text())
    assert "pass_rate" in recap["analysis"]["store"]["recap"]
    # Rollouts went through rosbag2 and the learner's bag reader.
    episodes, report = read_episodes(seed_dir / "rollouts" / "sft")
    assert len(episodes) == 3 and not report.skipped


def test_report_table_plot_and_results_json(smoke: dict) -> None:
    out = smoke["cfg"].out_dir()
    md = smoke["report"].read_text()
    assert "## Step 1: equal budget" in md and "## Step 2" in md
    for method in ("`sft`", "`imit_recap`", "`habc`", "`habc_ir`"):
        assert method in md
    assert "habc-protocol --task transfer_cube" in md  # the exact command
    assert "wall time" in md
    for png in ("success_per_round.png", "calibration.png", "weights.png", "traces.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    results = json.loads((out / "results.json").read_text())
    assert len(results["records"]) == 6
    assert len(results["invocations"]) == 2
    assert results["invocations"][1]["counters"]["rollouts"] == 0


def test_config_validation_names_the_bad_value() -> None:
    from habc_learner.protocol import ProtocolConfig

    with pytest.raises(ValueError, match="did you mean 'habc'"):
        ProtocolConfig(methods=("hab",))
    with pytest.raises(ValueError, match="step 2 continues"):
        ProtocolConfig(methods=("sft",), step2_rounds=1)
    with pytest.raises(ValueError, match="unknown task"):
        ProtocolConfig(task="transfer_cub")


def test_methods_come_from_the_learner_registry() -> None:
    from habc_learner.core.methods import METHODS
    from habc_learner.protocol import ProtocolConfig, needs_rollouts

    cfg = ProtocolConfig(methods=tuple(METHODS), step2_rounds=0)
    assert set(cfg.methods) == set(METHODS)
    assert not needs_rollouts(METHODS["sft"])
    assert needs_rollouts(METHODS["habc"]) and needs_rollouts(METHODS["imit_dagger"])


def test_method_variants() -> None:
    from habc_learner.protocol import ProtocolConfig, SeedRun, critic_overrides, method_config

    cfg = ProtocolConfig(methods=("habc", "habc+mc"), warmup_steps=7)
    assert critic_overrides("habc+mc") == {"efficiency_target": "mc"}
    assert critic_overrides("habc") == {}
    method = method_config(cfg, "habc+mc")
    assert method.name == "habc" and method.warmup_steps == 7
    assert critic_overrides("habc+td") == {"efficiency_target": "td"}
    assert method.actor_reduction == "weight_sum"
    batch_mean = method_config(cfg, "habc+batchmean")
    assert batch_mean.actor_reduction == "batch_mean" and batch_mean.warmup_steps == 7
    run = SeedRun(ProtocolConfig(methods=("habc+stride10",)), seed=0)
    run.dims = (20, 14)
    tcfg = run.trainer_config(method_config(cfg, "habc+stride10"), "habc+stride10", 10)
    assert tcfg.window.stride == 10 and tcfg.critic.efficiency_target == "mc"
    with pytest.raises(ValueError, match="unknown variant"):
        ProtocolConfig(methods=("habc+xx",))


def test_confidence_interval() -> None:
    from habc_learner.protocol import ci95, reliability

    mean, half, n = ci95([0.2, 0.4, 0.6])
    assert n == 3 and mean == pytest.approx(0.4)
    assert half == pytest.approx(4.303 * 0.2 / 3**0.5, rel=1e-3)
    assert ci95([0.5])[1] != ci95([0.5])[1]  # NaN half-width for one seed
    rel = reliability([0.05, 0.95, 0.95, 0.05], [0, 1, 1, 0])
    assert rel["ece"] == pytest.approx(0.05) and rel["auroc"] == pytest.approx(1.0)


def test_reliability_is_the_learners_calibration_summary() -> None:
    """One calibration code path: the protocol's records carry core.calibration's figures."""
    from habc_learner.core.calibration import calibration_summary
    from habc_learner.protocol import reliability

    # all three predictions tied at 0.5: AUROC = P(tie)/2 = 0.5; ECE = |0.5 - 2/3| = 1/6
    rel = reliability([0.5, 0.5, 0.5], [0, 1, 1])
    assert rel["auroc"] == pytest.approx(0.5) and rel["ece"] == pytest.approx(1 / 6)
    p, y = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    full, rel = calibration_summary(p, y), reliability(p, y)
    for key in ("n", "positives", "bin_count", "ece", "brier", "auroc", "mean_p", "mean_y"):
        assert rel[key] == full[key], key
    assert rel["auroc"] == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ordered
    assert reliability([], [])["ece"] != reliability([], [])["ece"]  # NaN without windows


def test_wilson_interval_matches_hand_computed_values() -> None:
    from habc_learner.protocol import fmt_rate, wilson_interval

    # 13 of 20 (p̂ = 0.65): centre (0.65 + 0.09604) / 1.19208 = 0.62583, half-width
    # 1.96·sqrt(0.011375 + 0.002401) / 1.19208 = 0.19298 -> [0.43285, 0.81881].
    lo, hi = wilson_interval(13, 20)
    assert lo == pytest.approx(0.43285, abs=1e-4) and hi == pytest.approx(0.81881, abs=1e-4)
    # 0 of 50 still has a positive upper bound: 3.8416 / 53.8416 = 0.0713.
    assert wilson_interval(0, 50) == pytest.approx((0.0, 0.0713), abs=1e-4)
    assert fmt_rate(13, 20) == "65 % [43, 82]"
    with pytest.raises(ValueError):
        wilson_interval(21, 20)


def test_demos_auto_and_sft_options_from_the_command_line() -> None:
    from habc_learner.protocol import build_parser, config_from_args

    def cfg(*argv: str):
        return config_from_args(build_parser().parse_args(list(argv)), "x")

    tuned = cfg("--task", "transfer_cube", "--demos", "auto", "--demo-candidates", "2", "5")
    assert tuned.tune_demos and tuned.demos == 5 and tuned.demo_candidates == (2, 5)
    assert tuned.band == (0.15, 0.5) and tuned.sft_patience == 5 and tuned.val_demos == 4
    fixed = cfg("--task", "transfer_cube", "--demos", "7", "--sft-patience", "0")
    assert not fixed.tune_demos and fixed.demos == 7 and fixed.sft_patience == 0
    assert fixed.device == "cpu" and cfg("--device", "cuda:1").device == "cuda:1"
    assert not cfg("--task", "transfer_cube").tune_demos  # a tuned task keeps its values
    with pytest.raises(ValueError, match="'auto', got 'many'"):
        cfg("--demos", "many")
    with pytest.raises(ValueError, match="demo_candidates must be increasing"):
        cfg("--demos", "auto", "--demo-candidates", "4", "2")
    with pytest.raises(ValueError, match="needs val_demos >= 1"):
        cfg("--val-demos", "0")
    budget = fixed.budget()
    assert {"sft_patience", "sft_validate_every", "sft_min_delta", "val_demos"} <= set(budget)
    # SFT's plateau is measured on success unless told otherwise, checked every 500 steps
    assert tuned.sft_criterion == "success" and tuned.sft_validate_every == 500
    flow = cfg("--sft-criterion", "flow")
    assert flow.sft_criterion == "flow" and flow.sft_validate_every == 100
    assert {"sft_criterion", "network"} <= set(budget)
    with pytest.raises(SystemExit):
        cfg("--sft-criterion", "vibes")


@pytest.mark.slow
def test_band_tuning_and_sft_plateau_end_to_end(tmp_path: Path) -> None:
    """--demos auto on transfer-cube at a tiny budget: the tuner bisects over the candidates
    with real SFT runs to the held-out plateau, records its probes, and the seed's SFT start
    reuses the chosen probe's checkpoint (no second SFT)."""
    pytest.importorskip("gym_aloha")
    from habc_learner.protocol import build_parser, config_from_args, run_protocol

    argv = [
        "--task", "transfer_cube", "--seeds", "0", "--methods", "sft",
        "--demos", "auto", "--demo-candidates", "1", "2", "3", "--tune-episodes", "2",
        "--val-demos", "1", "--sft-steps", "40", "--sft-validate-every", "10",
        "--sft-criterion", "flow",
        "--sft-patience", "2", "--rounds", "1", "--round-steps", "5", "--eval-episodes", "2",
        "--batch-size", "16", "--threads", "1",
        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    cfg = config_from_args(build_parser().parse_args(argv), "habc-protocol " + " ".join(argv))
    counters, report = run_protocol(cfg)
    tuning = json.loads((tmp_path / "work" / "transfer_cube" / "band_tuning.json").read_text())
    probes = tuning["probes"]
    assert probes[0]["value"] == 2  # the middle candidate first
    assert all(p["episodes"] == 2 for p in probes)
    assert tuning["chosen_demos"] in {p["value"] for p in probes}
    assert tuning["in_band"] == (0.15 <= probes[-1]["successes"] / 2 <= 0.5)
    start = json.loads(
        (tmp_path / "work" / "transfer_cube" / "seed0" / "sft_start" / "round_00.json").read_text()
    )
    assert start["demos"]["recorded"] == tuning["chosen_demos"]
    assert start["demos"]["held_out"] == 1
    sft = start["sft"]
    assert sft["history"][0][0] == 0 and sft["steps_run"] <= 40
    assert start["learner_step"] == sft["best_step"]
    # tuning SFT runs + 5 steps of the sft round; the start reused its probe's checkpoint
    tuned_steps = sum(p.get("steps_run", 0) for p in probes if "same_as" not in p)
    assert counters.train_steps == tuned_steps + 5
    md = report.read_text()
    assert "## SFT start" in md and "## Paired differences" in md
    assert f"**{tuning['chosen_demos']} demonstrations**" in md


@pytest.mark.slow
def test_sft_success_criterion_rolls_the_saved_policy_out_on_its_own_poses(tmp_path: Path) -> None:
    """--sft-criterion success: each held-out evaluation saves the policy, rolls it out on the
    seed's SFT validation poses (none of them a tuning, demo or evaluation pose) and feeds
    1 − success to the plateau rule; the scratch checkpoints are removed."""
    pytest.importorskip("gym_aloha")
    from habc_learner.protocol import SeedRun
    from habc_learner.protocol.config import (
        ProtocolConfig,
        demo_seed,
        eval_seed,
        sft_val_seed,
        tune_seed,
    )

    cfg = ProtocolConfig(
        task="transfer_cube", seeds=(0,), methods=("sft",), demos=2, sft_steps=20,
        sft_validate_every=10, sft_patience=5, tune_episodes=1, val_demos=1, batch_size=16,
        work=str(tmp_path / "work"), out=str(tmp_path / "out"),
    )  # fmt: skip
    assert cfg.sft_criterion == "success"
    run = SeedRun(cfg, 0)
    demos, _ = run.demo_episodes(2)
    evaluated: list[list[int]] = []
    real = run.evaluate
    run.evaluate = lambda ckpt, seeds=None: evaluated.append(list(seeds)) or real(ckpt, seeds)
    ckpt, info = run.train_sft(demos, run.val_demo_episodes(), "sft_ok")
    assert info["criterion"] == "success"
    assert [s for s, _ in info["history"]] == [0, 10, 20]
    assert all(loss in (0.0, 1.0) for _, loss in info["history"])  # 1 − success on one pose
    assert evaluated == [[sft_val_seed(0, 0)]] * 3
    others = {tune_seed(0, 0), demo_seed(0, 0), demo_seed(0, 1), eval_seed(0, 0)}
    assert sft_val_seed(0, 0) not in others
    assert not (Path(ckpt).parent / "validation").exists() and Path(ckpt).is_dir()


def test_suffix_table_says_where_the_operator_misses_its_targets() -> None:
    """The rollout table's warnings: fewer than 90 % of takeovers ending in success, or fewer
    than 60 % of takeover episodes with a suffix of 50 or more steps, are named per producer."""
    from habc_learner.protocol.report import render_suffix_table

    def rec(prod: str, takeovers: int, ok: int, with50: int) -> dict:
        rollouts = {
            "producer": prod,
            "takeovers": takeovers,
            "takeover_successes": ok,
            "episodes_with_suffix": with50,
            "episodes_with_suffix_50": with50,
            "suffix_windows": 10 * with50,
            "handbacks": takeovers,
            "one_arm_takeover_episodes": 0,
        }
        return {"rollouts": rollouts, "analysis": {}}

    good, weak = rec("habc", 10, 9, 6), rec("sft", 10, 8, 5)
    by_prod = {"habc": [good["rollouts"]], "sft": [weak["rollouts"]]}
    text = "\n".join(render_suffix_table([good, weak], by_prod))
    assert "| `habc` | 10 | 90 % | 60 % | 60 % | 60 | 10 | 0 | – |" in text
    assert (
        "not a competent operator here**: fewer than 90 % of its takeovers end in success "
        "for `sft` (80 %)" in text
    )
    assert (
        "suffix of 50 or more steps** (the operator's target is 60 % of takeover "
        "episodes): `sft` (50 %)" in text
    )
    assert "`habc` (" not in text  # meets both targets: named nowhere
