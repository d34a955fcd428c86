"""Run in the LeRobot environment: ``--weights backbone`` (habc's critic on the VLA's backbone).

    python check_backbone.py DATASET OUT

Trains a tiny SmolVLA 3 steps with the critic on its backbone (warmup 0), then prints one JSON
line: the critic was saved and reloads; its feature width is the VLM's; and for one frame of
each source the weights equal Eq. 5–8 and the §3.4 table computed here by hand in numpy from
the reloaded critic's outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from habc_bridge.core import dataset_schema as S
from habc_bridge.lerobot import backbone_critic as BC
from habc_bridge.lerobot import train as T

dataset, out = Path(sys.argv[1]), Path(sys.argv[2])
args = T.build_parser().parse_args(
    [
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--policy",
        "smolvla",
        "--tiny",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--chunk-size",
        "10",
        "--save-every",
        "3",
        "--weights",
        "backbone",
        "--gate-warmup",
        "0",
        "--critic-hidden",
        "32",
    ]
)
path, policy = T.train(args)
critic = BC.load_critic(path)
facts: dict = {"critic_saved": (path / BC.CRITIC_FILE).is_file()}

from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402
from lerobot.policies.factory import make_pre_post_processors  # noqa: E402

ds = LeRobotDataset(
    "local/" + dataset.name,
    root=dataset,
    video_backend="pyav",
    delta_timestamps={"action": [k / 50 for k in range(10)]},
)
pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(path))
table = BC.FrameTable.from_dataset(ds, dataset)
idx = np.array(
    [
        int(np.flatnonzero(table.source == S.SOURCE_CODES[name])[3])
        for name in ("rollout_success", "rollout_failure", "unlabeled", "demo", "intervention")
    ]
)


def inputs(indices: np.ndarray) -> dict:
    items = [ds[int(i)] for i in indices]
    return pre(T.split_batch(torch.utils.data.default_collate(items))[0])


phi = BC.backbone_features(policy, inputs(idx))
phi_next = BC.backbone_features(policy, inputs(table.next_index[idx]))
facts["feature_dim"] = int(phi.shape[1])
facts["vlm_width"] = int(policy.model.vlm_with_expert.config.text_config.hidden_size)
_loss, w, _info = BC.backbone_weights(critic, phi, phi_next, table, idx, gate_on=True)

with torch.no_grad():
    z, v = (t.numpy().astype(np.float64) for t in critic(phi))
    z2, v2 = (t.numpy().astype(np.float64) for t in critic(phi_next))
z, z2 = np.clip(z, -13.8155, 13.8155), np.clip(z2, -13.8155, 13.8155)
p = 1 / (1 + np.exp(-z))
has_next = table.has_next[idx]
a_v = np.where(has_next, z2 - z, 0.0)  # Eq. 5
a_e = np.where(has_next, -1 + v2 - v, 0.0)  # Eq. 6
g = 1 + np.tanh((1 - p) * a_v + p * a_e)  # Eq. 7
w_tilde = np.array([g[0], 0.0, 0.0, 1.0, 1.0])  # success g, failure 0, unlabeled 0, demo 1, IR 1
want = w_tilde / w_tilde[w_tilde > 0].mean()  # Eq. 8
facts["weights"] = w.numpy().tolist()
facts["weights_by_hand"] = want.tolist()
print("FACTS " + json.dumps(facts), flush=True)
