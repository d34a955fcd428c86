"""The LeRobot side of the bridge: runs only in the LeRobot environment (``.venv-lerobot``,
Python 3.12, ``lerobot[pi,smolvla,dataset]==0.6.1``). Never imports rclpy or habc's torch-2.13
modules; bags are read and written with ``rosbags`` through ``habc_learner.core.bag_reader``.

- :mod:`.export`: labels sidecar + episode bags -> LeRobotDataset v3.
- :mod:`.importer`: LeRobotDataset -> episode bags (declared column mapping).
- :mod:`.train`: HABC-weighted fine-tuning of a LeRobot flow-matching VLA.
- :mod:`.tiny`: tiny random-weight SmolVLA / PI0 / PI05 configs that build offline.
- :mod:`.serve`: a LeRobot checkpoint over openpi's websocket protocol.
"""

import os

# Nothing is downloaded at run time: every model, tokenizer and dataset here is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
