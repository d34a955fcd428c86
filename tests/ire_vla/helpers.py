"""Builders shared by the iRe-VLA tests: methods, trainer configs, stores of every scenario."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from habc_learner.core.critic import CriticConfig
from habc_learner.core.episode import SCENARIOS, scenario_episode
from habc_learner.core.methods import METHODS, MethodConfig
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import TrainerConfig
from habc_policy.core.configuration_flow import FlowPolicyConfig


def ire_method(**changes: object) -> MethodConfig:
    """The registered ``ire_vla`` method with IreVlaConfig fields changed."""
    base = METHODS["ire_vla"]
    assert base.ire_vla is not None
    return base.replace(ire_vla=dataclasses.replace(base.ire_vla, **changes))


def make_config(
    tmp_path: Path,
    policy: FlowPolicyConfig,
    critic: CriticConfig,
    method: str | MethodConfig = "ire_vla",
    **kw: object,
) -> TrainerConfig:
    base: dict[str, object] = dict(
        method=method,
        policy=policy,
        critic=critic,
        batch_size=32,
        steps_per_round=3,
        progress=False,
        checkpoint_dir=str(tmp_path / "ckpt"),
        log_dir=None,
    )
    return TrainerConfig(**{**base, **kw})


def make_store(
    config: TrainerConfig,
    length: int = 80,
    per_scenario: int = 2,
    scenarios: tuple[str, ...] = SCENARIOS,
    learner_step: int = 0,
    seed0: int = 0,
) -> ReplayStore:
    """Every synthetic scenario (demos, autonomous successes/failures, takeovers) twice."""
    store = ReplayStore(config.replay_config())
    add_scenarios(store, config, length, per_scenario, scenarios, learner_step, seed0)
    return store


def add_scenarios(
    store: ReplayStore,
    config: TrainerConfig,
    length: int = 80,
    per_scenario: int = 2,
    scenarios: tuple[str, ...] = SCENARIOS,
    learner_step: int = 0,
    seed0: int = 0,
) -> None:
    seed = seed0
    for scenario in scenarios:
        for _ in range(per_scenario):
            store.add_episode(
                scenario_episode(
                    scenario,
                    seed=seed,
                    length=length,
                    learner_step=learner_step,
                    cameras=config.policy.camera_names,
                    image_size=config.policy.image_size,
                    episode_id=f"{scenario}-{seed}-{learner_step}",
                )
            )
            seed += 1
