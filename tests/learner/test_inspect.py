"""habc-inspect: a recorded bag under a learner checkpoint -> PNG + a summary whose numbers are
the critic's own outputs."""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from habc_learner.core.bag_reader import read_episode, write_episode
from habc_learner.core.episode import scenario_episode
from habc_learner.core.inspection import AUTHORITY_STYLES, authority_style
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import Trainer, TrainerConfig
from habc_learner.inspect_bag import main, plot_trace
from habc_learner.protocol import critic_outputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("features", ["own", "actor_detached"])
def test_inspect_draws_the_png_and_prints_the_critics_numbers(
    tmp_path, capsys, tiny_policy_config, tiny_critic_config, features
) -> None:
    critic = dataclasses.replace(tiny_critic_config, features=features, lr=1e-2)
    cfg = TrainerConfig(
        method="habc",
        policy=tiny_policy_config,
        critic=critic,
        batch_size=32,
        steps_per_round=6,
        progress=False,
        checkpoint_dir=str(tmp_path / "ckpt"),
        log_dir=None,
    )
    store = ReplayStore(cfg.replay_config())
    for seed, scenario in enumerate(("demo", "autonomous_success", "autonomous_failure")):
        store.add_episode(scenario_episode(scenario, seed=seed, length=60))
    bag = tmp_path / "bags" / "takeover"
    write_episode(bag, scenario_episode("takeover_success", seed=11, length=60))
    png, js = tmp_path / "out" / "trace.png", tmp_path / "out" / "trace.json"
    with Trainer(cfg, store) as trainer:
        trainer.run_round()
        # A checkpoint root resolves to its LATEST.
        assert main([str(bag), str(tmp_path / "ckpt"), "--out", str(png), "--json", str(js)]) == 0
        # The critic's own outputs on the same bag, through the protocol's analysis path.
        own = ReplayStore(cfg.replay_config())
        own.add_episode(read_episode(bag))
        ref = critic_outputs(trainer, own, np.arange(len(own)))
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    order = np.argsort(ref["anchor"])
    p_v, g = ref["p_v"][order], ref["g"][order]
    text = capsys.readouterr().out
    m = re.search(r"p_v: first ([\d.]+) last ([\d.]+) mean ([\d.]+)", text)
    assert m, text
    assert float(m[1]) == pytest.approx(p_v[0], abs=1e-4)
    assert float(m[2]) == pytest.approx(p_v[-1], abs=1e-4)
    assert float(m[3]) == pytest.approx(p_v.mean(), abs=1e-4)
    m = re.search(r"g: mean ([\d.]+); share < 0.1 ([\d.]+); share > 1.9 ([\d.]+)", text)
    assert m, text
    assert float(m[1]) == pytest.approx(g.mean(), abs=1e-4)
    assert float(m[2]) == pytest.approx((g < 0.1).mean(), abs=1e-4)
    assert "15 human steps" in text and f"critic features {features}" in text
    data = json.loads(js.read_text())
    np.testing.assert_allclose(data["p_v"], p_v, atol=1e-6)
    np.testing.assert_allclose(data["v_e"], ref["v_e"][order], rtol=1e-5, atol=1e-4)
    assert data["summary"]["learner_step"] == 6


def test_inspect_refuses_a_checkpoint_without_critic(tmp_path, capsys, tiny_policy_config) -> None:
    cfg = TrainerConfig(
        method="sft",
        policy=tiny_policy_config,
        batch_size=8,
        steps_per_round=1,
        progress=False,
        checkpoint_dir=str(tmp_path / "ckpt"),
        log_dir=None,
    )
    store = ReplayStore(cfg.replay_config())
    store.add_episode(scenario_episode("demo", seed=0, length=60))
    with Trainer(cfg, store) as trainer:
        path = trainer.run_round().checkpoint
    bag = tmp_path / "bag"
    write_episode(bag, scenario_episode("autonomous_failure", seed=1, length=60))
    assert main([str(bag), str(path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no dual-head critic" in capsys.readouterr().err
    assert main([str(tmp_path / "nobag"), str(path)]) == 2


def test_timeline_styles_handle_new_and_unknown_codes(tmp_path) -> None:
    assert authority_style(0)[0] == "none" and authority_style(2)[0] == "human"
    assert authority_style(3)[0] == "hand-back"
    assert authority_style(9) == ("code 9", "#000000")
    assert len({colour for _, colour in AUTHORITY_STYLES.values()}) == len(AUTHORITY_STYLES)
    t = np.arange(40)
    authority = np.ones((40, 2), dtype=np.uint8)
    authority[10:20] = 2
    authority[20:25] = 3
    authority[30:, 1] = 9
    episode = SimpleNamespace(
        authority=authority, success_step=None, outcome=SimpleNamespace(value="failure")
    )
    trace = {
        "anchor": t,
        "p_v": np.linspace(0.2, 0.8, 40),
        "v_e": -t[::-1].astype(float),
        "g": np.ones(40),
    }
    out = tmp_path / "timeline.png"
    plot_trace(episode, trace, "codes 1, 2, 3 and an unknown 9", out)
    assert out.read_bytes()[:8] == PNG_MAGIC
