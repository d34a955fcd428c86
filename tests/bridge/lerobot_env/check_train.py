"""Run in the LeRobot environment: HABC-weighted training of a tiny LeRobot VLA, checked.

    python check_train.py DATASET OUT smolvla|pi0|pi05

Prints one JSON line of facts the pytest side asserts on:

- ``trained``: habc-lerobot-train's loop ran 3 steps and saved a checkpoint;
- ``reload_max_diff``: max |Δ| between the trained weights and the reloaded checkpoint's;
- ``zero_weight_grad_diff``: max |Δ| of the gradients of Σ w·ℓ / Σ w with w = (1, 0) when the
  second sample's actions and state are changed (0: a zero-weight sample gives no gradient),
  and ``weighted_grad_diff`` the same with w = (1, 1) (> 0: the test can see a difference);
- ``pad_masked_diff`` / ``pad_forward_diff``: change of our per-sample loss and of
  ``policy.forward(reduction="none")`` when only the padded chunk steps of a sample change;
- ``no_pad_match``: our per-sample loss equals ``policy.forward(batch, reduction="none")`` on a
  sample without padding (same noise and time);
- ``chunk_shape`` / ``chunk_finite``: a chunk from the reloaded checkpoint, served by
  ``LeRobotService`` on an observation of the dataset.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from habc_bridge.core import dataset_schema as S
from habc_bridge.core import openpi_protocol as proto
from habc_bridge.lerobot import tiny
from habc_bridge.lerobot import train as T
from habc_bridge.lerobot.serve import LeRobotService
from habc_learner.core.weights import weighted_actor_loss

dataset, out, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
CHUNK = 10
args = T.build_parser().parse_args(
    [
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--policy",
        kind,
        "--tiny",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--chunk-size",
        str(CHUNK),
        "--save-every",
        "3",
        "--log-every",
        "1",
    ]
)
path, policy = T.train(args)
facts: dict = {"trained": path.is_dir()}

tiny.prepare_load(path)
again = T.policy_class(kind).from_pretrained(path)
sd = again.state_dict()
facts["reload_max_diff"] = max(
    float((v.float() - sd[k].float()).abs().max()) for k, v in policy.state_dict().items()
)

from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402
from lerobot.policies.factory import make_pre_post_processors  # noqa: E402

ds = LeRobotDataset(
    "local/" + dataset.name,
    root=dataset,
    video_backend="pyav",
    delta_timestamps={"action": [k / 50 for k in range(CHUNK)]},  # the export's 50 fps
)
pre, _post = make_pre_post_processors(policy.config, pretrained_path=str(path))
end = int(ds.meta.episodes[0]["dataset_to_index"])
padded, full = end - 3, 5  # 3 real steps then padding / a window well inside episode 0


def batch_of(indices: list[int]) -> dict:
    items = [ds[i] for i in indices]
    inputs, _w = T.split_batch(torch.utils.data.default_collate(items))
    return pre(inputs)


params = [p for p in policy.parameters() if p.requires_grad]
policy.train()


def grads(batch: dict, w: list[float]) -> torch.Tensor:
    torch.manual_seed(0)
    policy.zero_grad(set_to_none=True)
    loss, _ = weighted_actor_loss(T.per_sample_loss(policy, batch), torch.tensor(w))
    loss.backward()
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
    )


base = batch_of([full, full + 7])
other = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in base.items()}
other["action"][1] += 1.0
other["observation.state"][1] += 0.5
facts["zero_weight_grad_diff"] = float((grads(base, [1, 0]) - grads(other, [1, 0])).abs().max())
facts["weighted_grad_diff"] = float((grads(base, [1, 1]) - grads(other, [1, 1])).abs().max())

with torch.no_grad():
    pb = batch_of([padded])
    pad = pb["action_is_pad"][0]
    facts["pad_steps"] = int(pad.sum())
    moved = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in pb.items()}
    moved["action"][0, pad] += 3.0

    def seeded(fn, b):
        torch.manual_seed(1)
        return fn(b)

    ours = seeded(lambda b: T.per_sample_loss(policy, b), pb)
    ours_moved = seeded(lambda b: T.per_sample_loss(policy, b), moved)
    theirs = seeded(lambda b: policy.forward(b, reduction="none")[0], pb)
    theirs_moved = seeded(lambda b: policy.forward(b, reduction="none")[0], moved)
    facts["pad_masked_diff"] = float((ours - ours_moved).abs().max())
    facts["pad_forward_diff"] = float((theirs - theirs_moved).abs().max())
    fb = batch_of([full])
    a = seeded(lambda b: T.per_sample_loss(policy, b), fb)
    b = seeded(lambda b: policy.forward(b, reduction="none")[0], fb)
    facts["no_pad_match"] = float((a - b).abs().max())

service = LeRobotService(path)
item = ds[full]
images = {
    cam: np.rint(item[key].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    for cam, key in service.cameras.items()
}
obs = proto.build_observation(item[S.KEY_STATE].numpy(), images, "reach the goal", camera_map={})
chunk = service.infer(obs)["actions"]
facts["chunk_shape"] = list(chunk.shape)
facts["chunk_finite"] = bool(np.all(np.isfinite(chunk)))
facts["checkpoint"] = str(path)
print("FACTS " + json.dumps(facts), flush=True)
