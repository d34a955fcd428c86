"""Run in the LeRobot environment: read a dataset with LeRobot's own reader and dump it.

    python read_dataset.py DATASET OUT.npz

Writes per-frame columns (npz, no pickle) as LeRobotDataset.__getitem__ returns them, plus a
JSON sidecar OUT.json with the tasks, checkpoint ids, episode bounds and one action-chunk
sample (delta_timestamps) to show the dataset trains.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root, out = Path(sys.argv[1]), Path(sys.argv[2])
ds = LeRobotDataset("local/" + root.name, root=root, video_backend="pyav")
cols: dict[str, list] = {}
strings: dict[str, list] = {"task": [], "habc.checkpoint_id": []}
for i in range(len(ds)):
    item = ds[i]
    for key, value in item.items():
        if key in strings:
            strings[key].append(str(value))
        elif hasattr(value, "numpy"):
            cols.setdefault(key, []).append(value.numpy())
np.savez(out, **{k: np.stack(v) for k, v in cols.items()})
fps = ds.meta.fps
chunked = LeRobotDataset(
    "local/" + root.name,
    root=root,
    video_backend="pyav",
    delta_timestamps={"action": [k / fps for k in range(8)]},
)
last = chunked[len(chunked) - 1]
doc = {
    "num_episodes": ds.num_episodes,
    "fps": fps,
    "features": {k: v["dtype"] for k, v in ds.meta.features.items()},
    "episodes": [
        [
            int(ds.meta.episodes[e]["dataset_from_index"]),
            int(ds.meta.episodes[e]["dataset_to_index"]),
        ]
        for e in range(ds.num_episodes)
    ],
    "strings": strings,
    "last_chunk_shape": list(last["action"].shape),
    "last_chunk_pad": last["action_is_pad"].numpy().tolist(),
}
out.with_suffix(".json").write_text(json.dumps(doc))
