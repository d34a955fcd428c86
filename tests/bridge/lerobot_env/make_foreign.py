"""Run in the LeRobot environment: a small foreign LeRobotDataset (not from habc).

    python make_foreign.py ROOT

Two episodes of 6 frames, a 16-dim action and state (column k of frame t of episode e holds
100·e + 10·t + k) and one 24×24 camera ``observation.images.front`` as PNG.
"""

from __future__ import annotations

import sys

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

features = {
    "observation.images.front": {
        "dtype": "image",
        "shape": (24, 24, 3),
        "names": ["height", "width", "channels"],
    },
    "observation.state": {"dtype": "float32", "shape": (16,), "names": None},
    "action": {"dtype": "float32", "shape": (16,), "names": None},
}
ds = LeRobotDataset.create(
    "local/foreign", fps=10, features=features, root=sys.argv[1], use_videos=False
)
for e in range(2):
    for t in range(6):
        value = (100 * e + 10 * t + np.arange(16)).astype(np.float32)
        image = np.full((24, 24, 3), 40 * e + 20 * t, np.uint8)
        ds.add_frame(
            {
                "observation.images.front": image,
                "observation.state": value,
                "action": value,
                "task": f"foreign task {e}",
            }
        )
    ds.save_episode()
ds.finalize()
