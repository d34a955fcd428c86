"""``habc-lerobot-train``: fine-tune a LeRobot flow-matching VLA with HABC weights.

    habc-lerobot-train --dataset DATASET --out RUN --policy smolvla|pi0|pi05
        (--tiny | --pretrained FOLDER) [--steps N] [--batch-size B] [--lr LR]

One small training loop of our own around LeRobot's policy, processors and dataset, rather
than a registered ``SampleWeighter``: LeRobot 0.6.1's ``make_sample_weighter`` knows only
``rabc`` and ``uniform`` (a new type means patching its factory and its draccus train config),
and HABC needs two things its train script does not do: padded chunk steps masked for
PI0/PI05, and zero-weight windows kept out of the optimizer step. The loop is:

1. ``LeRobotDataset`` with ``delta_timestamps`` of one chunk (``action_is_pad`` marks the
   steps past the episode end); frames are drawn uniformly from those with w > 0 (``--sample
   valid``, the default; ``all`` draws every frame, zero weights included).
2. LeRobot's preprocessor (normalization with the dataset's stats, tokenization).
3. ℓ_i: ``policy.forward(batch, reduction="none")`` for SmolVLA, which masks ``action_is_pad``
   itself; for PI0/PI05, which do not, the same flow-matching loss of LeRobot's model with
   padded steps zeroed (:func:`per_sample_loss`): mean_{h,d} m·‖u − v‖², habc's Eq. 1 form.
4. L = Σ_i w_i·ℓ_i / Σ_i w_i (habc's ``weighted_actor_loss``) with w the export's
   ``habc.weight`` (``--weights export``: habc's critic on habc's encoder), or, with
   ``--weights backbone``, habc's dual-head critic trained in this loop on the VLA's own
   backbone features (the paper's arrangement, :mod:`.backbone_critic`). Failed autonomous
   windows and unlabeled pre-takeover windows have w = 0 and give no gradient; a batch
   without weight takes no step.

Flow time: LeRobot's PI0/PI05 interpolate x_t = t·ε + (1 − t)·A with target u = ε − A (t = 1 is
noise), habc's flow runs the other way (τ = 0 is noise). The weights do not depend on flow
time and this loop never hands habc's τ to a LeRobot model; a schedule ported from habc's
``time_schedule`` must be mirrored (t = 1 − τ).

The result, ``RUN/checkpoints/<step>/pretrained_model`` (LeRobot's layout: config, weights,
processors) plus ``habc_train.json``, loads with ``Policy.from_pretrained`` and serves with
``python -m habc_bridge.lerobot.serve``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from habc_bridge.core import dataset_schema as S
from habc_bridge.lerobot import tiny
from habc_learner.core.weights import weighted_actor_loss

VIDEO_BACKEND = "pyav"
SAMPLING = ("valid", "all")
WEIGHTS = ("export", "backbone")


def policy_class(kind: str) -> Any:
    if kind == "smolvla":
        from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

        return SmolVLAPolicy
    if kind == "pi0":
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy

        return PI0Policy
    if kind == "pi05":
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy

        return PI05Policy
    raise ValueError(f"policy type {kind!r} is not one of {tiny.POLICY_TYPES}")


def per_sample_loss(policy: Any, batch: dict[str, Any]) -> torch.Tensor:
    """ℓ_i [B]: the flow-matching loss of each sample, padded chunk steps not counted.

    SmolVLA: ``policy.forward(batch, reduction="none")`` (it masks ``action_is_pad``).
    PI0/PI05: LeRobot's own model loss, [B, H, D_max] from ``policy.model.forward`` on the
    inputs ``policy.forward`` prepares, cut to the real action dims and multiplied by the
    in-episode mask m = ¬action_is_pad, then mean_{h,d} (identical to ``policy.forward(batch,
    reduction="none")`` when nothing is padded, which a test checks).
    """
    kind = policy.config.type
    if kind == "smolvla":
        return policy.forward(batch, reduction="none")[0]
    if kind not in ("pi0", "pi05"):
        raise ValueError(f"no per-sample loss for policy type {kind!r}")
    from lerobot.utils.constants import ACTION, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    images, img_masks = policy._preprocess_images(batch)
    tokens, masks = batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]
    actions = policy.prepare_action(batch)
    noise = policy.model.sample_noise(actions.shape, actions.device)
    t = policy.model.sample_time(actions.shape[0], actions.device)
    if kind == "pi0":
        state = policy.prepare_state(batch)
        losses = policy.model.forward(images, img_masks, tokens, masks, state, actions, noise, t)
    else:
        losses = policy.model.forward(images, img_masks, tokens, masks, actions, noise, t)
    losses = losses[:, :, : policy.config.output_features[ACTION].shape[0]]
    pad = batch.get("action_is_pad")
    if pad is not None:
        losses = losses * (~pad.bool()).unsqueeze(-1).to(losses.dtype)
    return losses.mean(dim=(1, 2))


def split_batch(batch: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """(the policy's inputs, w [B]): the habc.* columns leave the batch, the weight is kept."""
    if S.COL_WEIGHT not in batch:
        raise ValueError(
            f"the dataset has no {S.COL_WEIGHT!r} column: export it with habc-export-lerobot"
        )
    w = batch[S.COL_WEIGHT].reshape(-1).float()
    inputs = {k: v for k, v in batch.items() if not k.startswith("habc.")}
    return inputs, w


def features_for_policy(meta: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """LeRobot policy features (cameras, state in; action out) of a dataset."""
    from lerobot.utils.feature_utils import dataset_to_policy_features

    feats = dataset_to_policy_features(meta.features)
    inputs = {k: v for k, v in feats.items() if k.startswith("observation.")}
    outputs = {k: v for k, v in feats.items() if k == S.KEY_ACTION}
    return inputs, outputs


def atomic_save(
    policy: Any, pre: Any, post: Any, folder: Path, extra: dict[str, Any], critic: Any = None
) -> None:
    """policy + processors + ``habc_train.json`` (+ the backbone critic) into ``folder``,
    atomically."""
    staging = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        policy.save_pretrained(staging)
        pre.save_pretrained(staging)
        post.save_pretrained(staging)
        (staging / "habc_train.json").write_text(json.dumps(extra, indent=1))
        if critic is not None:
            from habc_bridge.lerobot.backbone_critic import save_critic

            save_critic(critic, staging)
        if extra.get("tiny"):
            tiny.mark_tiny(staging, extra["policy"], Path(extra["assets"]))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def train(args: argparse.Namespace) -> tuple[Path, Any]:
    """Run the loop; return the last checkpoint folder and the trained policy."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    repo_id = "local/" + args.dataset.name
    meta = LeRobotDatasetMetadata(repo_id, root=args.dataset)
    if S.COL_WEIGHT not in meta.features:
        raise ValueError(f"{args.dataset} has no {S.COL_WEIGHT!r}: export with habc-export-lerobot")
    inputs, outputs = features_for_policy(meta)
    assets = args.out / "assets"
    if args.tiny:
        cfg = tiny.tiny_config(args.policy, inputs, outputs, args.chunk_size, assets)
        policy = policy_class(args.policy)(cfg)
    else:
        tiny.prepare_load(args.pretrained)
        policy = policy_class(args.policy).from_pretrained(args.pretrained)
        cfg = policy.config
    chunk = cfg.chunk_size
    ds = LeRobotDataset(
        repo_id,
        root=args.dataset,
        video_backend=VIDEO_BACKEND,
        delta_timestamps={S.KEY_ACTION: [k / meta.fps for k in range(chunk)]},
    )
    pre, post = make_pre_post_processors(cfg, dataset_stats=ds.meta.stats)
    weights = np.asarray(ds.hf_dataset[S.COL_WEIGHT], dtype=np.float32).reshape(-1)
    pool = np.flatnonzero(weights > 0) if args.sample == "valid" else np.arange(len(ds))
    critic = table = critic_optimizer = None
    if args.weights == "backbone":  # the paper's arrangement: habc's critic on the VLA
        from habc_bridge.lerobot import backbone_critic as BC
        from habc_learner.core.critic import CriticConfig, DualHeadCritic

        table = BC.FrameTable.from_dataset(ds, args.dataset)
        pool = table.useful() if args.sample == "valid" else pool
        probe = pre(split_batch(torch.utils.data.default_collate([ds[int(pool[0])]]))[0])
        feature_dim = int(BC.backbone_features(policy, probe).shape[-1])
        critic = DualHeadCritic(feature_dim, CriticConfig(hidden_dim=args.critic_hidden))
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    if pool.size == 0:
        raise ValueError(f"{args.dataset}: every frame has weight 0: nothing to learn from")
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    policy.train()
    log: list[dict[str, float]] = []
    last: Path | None = None
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = rng.choice(pool, size=args.batch_size, replace=pool.size < args.batch_size)
        batch = torch.utils.data.default_collate([ds[int(i)] for i in idx])
        inputs_b, w = split_batch(batch)
        inputs_b = pre(inputs_b)
        critic_info: dict[str, float] = {}
        if critic is not None:
            nxt = pre(
                split_batch(
                    torch.utils.data.default_collate([ds[int(i)] for i in table.next_index[idx]])
                )[0]
            )
            critic_loss, w, critic_info = BC.backbone_weights(
                critic,
                BC.backbone_features(policy, inputs_b),
                BC.backbone_features(policy, nxt),
                table,
                idx,
                gate_on=step > args.gate_warmup,
            )
            critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_optimizer.step()
        per = per_sample_loss(policy, inputs_b)
        loss, info = weighted_actor_loss(per, w.to(per.device))
        info.update(critic_info)
        info["weights/sum"] = float(w.sum())
        if float(w.sum()) > 0:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            info["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, args.grad_clip))
            optimizer.step()
        info["step"] = step
        log.append(info)
        if step % args.log_every == 0 or step == args.steps:
            print(
                f"step {step}: loss {info['loss/actor']:.4f} (unweighted "
                f"{info['loss/flow_unweighted']:.4f}), Σw {info['weights/sum']:.2f}",
                flush=True,
            )
        if step % args.save_every == 0 or step == args.steps:
            last = args.out / "checkpoints" / f"{step:06d}" / "pretrained_model"
            atomic_save(
                policy,
                pre,
                post,
                last,
                {
                    "weights": args.weights,
                    "policy": args.policy,
                    "tiny": bool(args.tiny),
                    "assets": str(assets),
                    "dataset": str(args.dataset),
                    "step": step,
                    "sample": args.sample,
                    "loss": "sum_i w_i l_i / sum_i w_i (habc.weight)",
                    "log": log[-args.save_every :],
                },
                critic,
            )
    print(f"{args.steps} steps in {time.perf_counter() - t0:.1f} s; checkpoint {last}")
    assert last is not None
    return last, policy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="habc-lerobot-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="an export of habc-export-lerobot")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--policy", required=True, choices=tiny.POLICY_TYPES)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", action="store_true", help="tiny random-weight config (offline)")
    src.add_argument("--pretrained", type=Path, help="a local LeRobot checkpoint folder")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=50, help="(tiny configs) chunk length H")
    p.add_argument("--lr", type=float, default=2.5e-5)
    p.add_argument("--weight-decay", type=float, default=1e-10)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--sample", choices=SAMPLING, default="valid", help="frames drawn")
    p.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="export",
        help="export: the exported habc.weight (habc's critic); backbone: habc's dual-head "
        "critic trained here on the VLA's own backbone features (the paper's arrangement)",
    )
    p.add_argument("--gate-warmup", type=int, default=500, help="(backbone) steps with g = 1")
    p.add_argument("--critic-lr", type=float, default=3e-4, help="(backbone) critic Adam lr")
    p.add_argument("--critic-hidden", type=int, default=256, help="(backbone) head width")
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "batch_size", "chunk_size", "save_every", "log_every", "threads"):
        if getattr(args, name) < 1:
            print(f"habc-lerobot-train: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if not (math.isfinite(args.lr) and args.lr > 0):
        print("habc-lerobot-train: --lr must be > 0", file=sys.stderr)
        return 2
    try:
        train(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"habc-lerobot-train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
