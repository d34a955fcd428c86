"""Three controlled mechanism experiments whose right answer is known by construction.

A 2-D point world: the state is the position x_t ∈ R², an action moves it, x_{t+1} = x_t + a_t,
every step has length ``step``. Episodes are written directly (no simulator), trained on by the
real learner (:class:`~habc_learner.core.trainer.Trainer`, flow-matching actor, dual-head
critic), and the trained actor is asked what it does at the start state x_0 = 0.

1. **Viability.** From x_0 a few rollouts go right (behaviour A, success with probability
   ``p_viable``), most go left (B, success with probability ``1 - p_viable``), so both leave
   about as many successful episodes. HABC-weighted BC must choose A more often than uniform BC
   on the same windows (every successful rollout window at weight 1, the gate g ≡ 1).
2. **Efficiency.** Every rollout succeeds at the goal (n·step, 0): directly along the x axis,
   or by a detour up ``detour`` steps, along, and down again. HABC (efficiency head) must
   choose the direct path more often, and reach the goal in fewer steps, than HABC-V.
3. **Credit.** Autonomous rollouts go right and succeed; in "mistake" rollouts the policy
   first goes left (the mistake), the operator takes over, drives back and succeeds. Naive
   labelling gives the mistake windows the episode's success; intervention-aware labelling
   leaves them unlabeled (weight 0). Measured: the normalised weight on the mistake windows
   and how often the trained actor goes left at x_0.

``bench/bench_mechanisms.py`` runs them at a larger size and prints the table;
``tests/learner/test_mechanisms.py`` runs them scaled down and asserts the direction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from habc_learner.core import weights as W
from habc_learner.core.critic import CriticConfig
from habc_learner.core.episode import HUMAN, POLICY, Episode, Outcome
from habc_learner.core.inspection import critic_trace
from habc_learner.core.labeling import Source
from habc_learner.core.methods import MethodConfig, get_method
from habc_learner.core.replay import ReplayStore
from habc_learner.core.trainer import Trainer, TrainerConfig
from habc_learner.core.windows import WindowConfig
from habc_policy.core.configuration_flow import FlowPolicyConfig
from habc_policy.core.modeling_flow import tokenize_prompt

ARM_SLICES = ((0, 1), (1, 2))  # one action dim per "arm": per-step authority stays per arm
PROMPT = "reach the goal"


@dataclass(frozen=True)
class MechanismConfig:
    """Size of one experiment.

    Attributes:
        step: length of one action. decision_step: length of the first (deciding) action of
            the viability rollouts. n: steps of the direct path. detour: steps up (and down)
            of the efficiency detour. mistake: policy steps before the takeover (credit).
        episodes: rollouts per experiment. p_viable: success probability of behaviour A
            (viability; B succeeds w.p. 1 − p_viable). viable_fraction: share of the rollouts
            that take behaviour A. train_steps, warmup_steps, batch_size, lr: learner budget.
        horizon: action chunk H (and window horizon). samples: chunks sampled at x_0 to
            measure the actor's choice. rollouts: closed-loop episodes in the point world
            (efficiency). noise: σ of the per-step action noise in the data. seed.
        critic: critic config.
    """

    step: float = 0.1
    decision_step: float = 0.5
    n: int = 8
    detour: int = 4
    mistake: int = 4
    episodes: int = 60
    p_viable: float = 0.8
    viable_fraction: float = 0.2
    train_steps: int = 600
    warmup_steps: int = 150
    batch_size: int = 64
    lr: float = 1e-3
    horizon: int = 4
    samples: int = 200
    rollouts: int = 20
    noise: float = 0.005
    seed: int = 0
    critic: CriticConfig = field(
        default_factory=lambda: CriticConfig(
            features="actor_detached",
            hidden_dim=64,
            num_layers=2,
            lr=1e-3,
            validation_fraction=0.0,
            early_stopping_patience=0,
        )
    )

    def policy_config(self) -> FlowPolicyConfig:
        return FlowPolicyConfig(
            horizon=self.horizon,
            action_dim=2,
            proprio_dim=2,
            feature_dim=32,
            hidden_dim=128,
            num_blocks=2,
            time_embed_dim=16,
            prompt_dim=8,
            prompt_buckets=64,
        )


# ------------------------------------------------------------------------------ episodes
def point_episode(
    actions: np.ndarray,
    outcome: Outcome,
    episode_id: str,
    controllers: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    noise: float = 0.0,
) -> Episode:
    """An episode of the point world from x_0 = 0: ``actions`` [T, 2] (plus N(0, noise²)
    per step), ``controllers`` [T] of POLICY / HUMAN (default all POLICY); success at T − 1."""
    actions = np.asarray(actions, dtype=np.float32)
    if rng is not None and noise > 0:
        actions = actions + rng.normal(0.0, noise, actions.shape).astype(np.float32)
    length = actions.shape[0]
    proprio = np.concatenate([np.zeros((1, 2), np.float32), np.cumsum(actions, 0)[:-1]])
    ctrl = np.full(length, POLICY, np.uint8) if controllers is None else controllers
    authority = np.repeat(np.asarray(ctrl, np.uint8)[:, None], 2, axis=1)
    policy = authority[:, 0] == POLICY
    return Episode(
        episode_id=episode_id,
        task_id="point",
        prompt=PROMPT,
        timestamps=np.arange(length) * 0.02,
        proprio=proprio.astype(np.float32),
        actions=actions,
        authority=authority,
        checkpoint_ids=np.where(policy, "ckpt", ""),
        learner_steps=np.where(policy, 0, -1).astype(np.int64),
        outcome=outcome,
        arm_slices=ARM_SLICES,
        success_step=length - 1 if outcome is Outcome.SUCCESS else None,
    )


def _moves(*legs: tuple[tuple[float, float], int]) -> np.ndarray:
    return np.concatenate([np.tile(np.asarray(d, np.float32), (k, 1)) for d, k in legs])


def viability_episodes(cfg: MechanismConfig) -> list[Episode]:
    """A share ``viable_fraction`` of the rollouts go right (A: success w.p. ``p_viable``), the
    rest left (B: success w.p. 1 − ``p_viable``). With the defaults (0.2, 0.8) both behaviours
    leave about as many successful episodes, so uniform BC on the successes is indifferent
    and only the critic can tell which behaviour is viable."""
    rng = np.random.default_rng(cfg.seed)
    out = []
    for i in range(cfg.episodes):
        viable = int((i + 1) * cfg.viable_fraction) > int(i * cfg.viable_fraction)
        direction = 1.0 if viable else -1.0
        p = cfg.p_viable if viable else 1.0 - cfg.p_viable
        outcome = Outcome.SUCCESS if rng.random() < p else Outcome.FAILURE
        # The decision is one long first step, so x_0 has no near neighbours in the data.
        acts = _moves(
            ((direction * cfg.decision_step, 0.0), 1), ((direction * cfg.step, 0.0), cfg.n - 1)
        )
        out.append(point_episode(acts, outcome, f"viab-{i}", rng=rng, noise=cfg.noise))
    return out


def efficiency_episodes(cfg: MechanismConfig) -> list[Episode]:
    """Every rollout succeeds at (n·step, 0): half directly, half by the detour."""
    rng = np.random.default_rng(cfg.seed)
    s, out = cfg.step, []
    for i in range(cfg.episodes):
        if i % 2 == 0:
            acts = _moves(((s, 0.0), cfg.n))
        else:
            acts = _moves(((0.0, s), cfg.detour), ((s, 0.0), cfg.n), ((0.0, -s), cfg.detour))
        out.append(point_episode(acts, Outcome.SUCCESS, f"eff-{i}", rng=rng, noise=cfg.noise))
    return out


def credit_episodes(cfg: MechanismConfig) -> tuple[list[Episode], list[int]]:
    """A third autonomous right-going successes; a third mistakes: ``mistake`` policy steps
    left, then the operator drives back and on to the goal (success); a third the same mistake
    without takeover, going on left (failure). Returns the episodes and the indices of the
    mistake-then-takeover episodes."""
    rng = np.random.default_rng(cfg.seed)
    s, out, mistakes = cfg.step, [], []
    for i in range(cfg.episodes):
        kind = i % 3
        if kind == 0:
            acts, ctrl, outcome = _moves(((s, 0.0), cfg.n)), None, Outcome.SUCCESS
        elif kind == 1:
            acts = _moves(((-s, 0.0), cfg.mistake), ((s, 0.0), cfg.mistake + cfg.n))
            ctrl = np.full(len(acts), HUMAN, np.uint8)
            ctrl[: cfg.mistake] = POLICY
            outcome = Outcome.SUCCESS
            mistakes.append(i)
        else:
            acts, ctrl, outcome = _moves(((-s, 0.0), cfg.n)), None, Outcome.FAILURE
        out.append(point_episode(acts, outcome, f"cred-{i}", ctrl, rng=rng, noise=cfg.noise))
    return out, mistakes


# ------------------------------------------------------------------------------ methods
def uniform_bc() -> MethodConfig:
    """Uniform BC on the windows HABC trains the actor on: the HABC weight table with g ≡ 1
    (successful rollout and intervention windows at 1, failed ones at 0), no critic."""
    return dataclasses.replace(
        get_method("habc"),
        name="uniform_bc",
        weighting="uniform",
        train_viability=False,
        train_efficiency=False,
    )


def method_named(name: str) -> MethodConfig:
    """``uniform_bc`` or a registry name, optionally ``+naive`` (naive labelling)."""
    base, _, variant = name.partition("+")
    method = uniform_bc() if base == "uniform_bc" else get_method(base)
    if variant == "naive":
        return method.replace(name=name, labeling="naive")
    if variant:
        raise ValueError(f"unknown variant {variant!r} of {name!r}; known: 'naive'")
    return method


def train(cfg: MechanismConfig, method: MethodConfig, episodes: list[Episode]) -> Trainer:
    """One round of ``train_steps`` learner steps of ``method`` on ``episodes`` (caller
    closes the trainer)."""
    method = method.replace(warmup_steps=cfg.warmup_steps)
    tcfg = TrainerConfig(
        method=method,
        policy=cfg.policy_config(),
        critic=cfg.critic,
        window=WindowConfig(horizon=cfg.horizon, min_human_steps=max(1, cfg.horizon // 2)),
        batch_size=cfg.batch_size,
        steps_per_round=cfg.train_steps,
        actor_lr=cfg.lr,
        seed=cfg.seed,
        progress=False,
        checkpoint_dir=None,
        log_dir=None,
    )
    store = ReplayStore(tcfg.replay_config())
    store.add_episodes(episodes)
    trainer = Trainer(tcfg, store)
    trainer.run_round()
    return trainer


def _prompt_tokens(trainer: Trainer, n: int) -> torch.Tensor:
    pcfg = trainer.config.policy
    tokens = tokenize_prompt(PROMPT, pcfg.prompt_buckets, pcfg.prompt_max_tokens)
    return torch.from_numpy(tokens)[None].expand(n, -1).to(trainer.device)


@torch.no_grad()
def sample_first_actions(trainer: Trainer, state: np.ndarray, samples: int) -> np.ndarray:
    """First action of ``samples`` chunks the actor samples at ``state`` [2], raw units [N, 2]."""
    normalizer = trainer.ensure_normalizer()
    trainer.policy.eval()
    q = normalizer.normalize_proprio(torch.as_tensor(state, dtype=torch.float32)[None])
    q = q.expand(samples, -1).to(trainer.device)
    tokens = _prompt_tokens(trainer, samples)
    gen = torch.Generator(device=trainer.device).manual_seed(trainer.config.seed)
    chunk = trainer.policy.sample_actions(q, tokens, generator=gen)
    trainer.policy.train()
    return normalizer.unnormalize_action(chunk)[:, 0].cpu().numpy()


@torch.no_grad()
def rollout_lengths(trainer: Trainer, cfg: MechanismConfig, max_steps: int) -> np.ndarray:
    """Closed loop in the point world from x_0 = 0: sample a chunk, execute it, repeat; the
    episode succeeds when |x − goal| < step/2. Returns the step count of each of
    ``cfg.rollouts`` episodes (−1: no success within ``max_steps``)."""
    normalizer = trainer.ensure_normalizer()
    goal = np.array([cfg.n * cfg.step, 0.0])
    tokens = _prompt_tokens(trainer, cfg.rollouts)
    gen = torch.Generator(device=trainer.device).manual_seed(trainer.config.seed + 1)
    x = np.zeros((cfg.rollouts, 2))
    done = np.full(cfg.rollouts, -1)
    trainer.policy.eval()
    t = 0
    while t < max_steps and (done < 0).any():
        q = normalizer.normalize_proprio(torch.as_tensor(x, dtype=torch.float32))
        chunk = trainer.policy.sample_actions(q, tokens, generator=gen)
        acts = normalizer.unnormalize_action(chunk).cpu().numpy()
        for h in range(acts.shape[1]):
            x = np.where((done < 0)[:, None], x + acts[:, h], x)
            t += 1
            hit = (done < 0) & (np.linalg.norm(x - goal, axis=1) < cfg.step / 2)
            done[hit] = t
            if t >= max_steps:
                break
    trainer.policy.train()
    return done


def normalized_weights(trainer: Trainer) -> dict[str, np.ndarray]:
    """Per window of the store (episode order): source, gate g (Eq. 7, after warmup, HABC-V
    gate or 1 without critic), Eq. 8 weight w over all valid windows, episode index, anchor."""
    store = trainer.store
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("source", "g", "episode", "anchor")}
    for e in range(len(store.episodes)):
        if trainer.critic is not None:
            tr = critic_trace(trainer, e)
            src, g, anchor = tr["source"], tr["g"], tr["anchor"]
        else:
            rows = np.flatnonzero(store.table.episode_index == e)
            src, anchor = store.table.source[rows], store.table.anchor[rows]
            g = np.ones(len(rows), dtype=np.float32)
        cols["source"].append(src)
        cols["g"].append(g)
        cols["episode"].append(np.full(len(src), e))
        cols["anchor"].append(anchor)
    out = {k: np.concatenate(v) for k, v in cols.items()}
    source = torch.from_numpy(out["source"].astype(np.int64))
    w_tilde = W.source_weights(source, torch.from_numpy(out["g"]).float(), False)
    out["w"] = W.normalize_weights(w_tilde).numpy()
    return out


# ------------------------------------------------------------------------------ experiments
def run_viability(cfg: MechanismConfig, methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Share of sampled first actions at x_0 that go right (the viable behaviour)."""
    episodes = viability_episodes(cfg)
    res: dict[str, dict[str, Any]] = {}
    for name in methods:
        with train(cfg, method_named(name), episodes) as trainer:
            first = sample_first_actions(trainer, np.zeros(2), cfg.samples)
            w = normalized_weights(trainer)
        start = (w["anchor"] == 0) & (w["source"] == Source.ROLLOUT_SUCCESS)
        right = np.array([episodes[e].actions[0, 0] > 0 for e in w["episode"]])
        res[name] = {
            "viable_share": float((first[:, 0] > 0).mean()),
            "w_start_viable": float(w["w"][start & right].mean()),
            "w_start_nonviable": float(w["w"][start & ~right].mean()),
        }
    res["_data"] = {
        "successes_viable": sum(
            e.outcome is Outcome.SUCCESS and e.actions[0, 0] > 0 for e in episodes
        ),
        "successes_nonviable": sum(
            e.outcome is Outcome.SUCCESS and e.actions[0, 0] < 0 for e in episodes
        ),
    }
    return res


def run_efficiency(cfg: MechanismConfig, methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Share of direct first actions at x_0, and closed-loop success and successful length."""
    episodes = efficiency_episodes(cfg)
    res: dict[str, dict[str, Any]] = {}
    for name in methods:
        with train(cfg, method_named(name), episodes) as trainer:
            first = sample_first_actions(trainer, np.zeros(2), cfg.samples)
            lengths = rollout_lengths(trainer, cfg, max_steps=3 * (cfg.n + 2 * cfg.detour))
            w = normalized_weights(trainer)
        ok = lengths > 0
        direct_ep = np.array(
            [abs(episodes[e].actions[0, 0]) > abs(episodes[e].actions[0, 1]) for e in w["episode"]]
        )
        start = w["anchor"] == 0
        res[name] = {
            "direct_share": float((first[:, 0] > np.abs(first[:, 1])).mean()),
            "success": float(ok.mean()),
            "mean_success_length": float(lengths[ok].mean()) if ok.any() else float("nan"),
            "w_start_direct": float(w["w"][start & direct_ep].mean()),
            "w_start_detour": float(w["w"][start & ~direct_ep].mean()),
        }
    res["_data"] = {"direct_length": cfg.n, "detour_length": cfg.n + 2 * cfg.detour}
    return res


def run_credit(cfg: MechanismConfig, methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Weight on the mistake's actions and the share of sampled first actions at x_0 that
    repeat the mistake (go left).

    ``w_mistake``: over the windows anchored in the mistake segment of the takeover episodes,
    the mean of w_i × (share of the window's mistake steps that are actor targets under its
    mask): the weight the actor loss puts on the mistaken actions (an intervention window
    there imitates only its human steps)."""
    episodes, mistakes = credit_episodes(cfg)
    res: dict[str, dict[str, Any]] = {}
    for name in methods:
        with train(cfg, method_named(name), episodes) as trainer:
            first = sample_first_actions(trainer, np.zeros(2), cfg.samples)
            w = normalized_weights(trainer)
            store = trainer.store
            rows = np.flatnonzero(
                np.isin(store.table.episode_index, mistakes) & (store.table.anchor < cfg.mistake)
            )
            batch = store.gather(rows, load_images=False, next_images=False)
        steps = store.table.anchor[rows][:, None] + np.arange(cfg.horizon)
        on_mistake = steps < cfg.mistake
        target = batch.action_mask.numpy().any(axis=-1) & on_mistake
        share = target.sum(1) / on_mistake.sum(1)
        order = np.lexsort((w["anchor"], w["episode"]))
        key = {
            (int(e), int(a)): i
            for i, (e, a) in enumerate(zip(w["episode"][order], w["anchor"][order]))
        }
        w_rows = np.array(
            [
                w["w"][order][key[(int(e), int(a))]]
                for e, a in zip(store.table.episode_index[rows], store.table.anchor[rows])
            ]
        )
        auto = np.array(
            [
                episodes[e].outcome is Outcome.SUCCESS and not episodes[e].human_steps.any()
                for e in w["episode"]
            ]
        )
        res[name] = {
            "w_mistake": float((w_rows * share).mean()),
            "w_mistake_windows": float(w_rows.mean()),
            "w_autonomous_success": float(w["w"][auto].mean()),
            "repeat_share": float((first[:, 0] < 0).mean()),
        }
    return res
