"""Paper-protocol benchmark: every learner method side by side on one task (see
:mod:`habc_learner.protocol` for the protocol, the options and the outputs).

A thin wrapper so the benchmark runs from a source checkout without the console script::

    python bench/bench_protocol.py --task transfer_cube --seeds 0 1 2 --rounds 2 \\
        --rollouts 20 --round-steps 600 --eval-episodes 30 --step2-rounds 1
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("habc_policy", "habc_learner", "arx_x5_driver"):
    sys.path.insert(0, str(ROOT / "src" / pkg))

from habc_learner.protocol import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
