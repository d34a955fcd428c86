"""``python -m habc_learner.protocol``: the same as ``habc-protocol``."""

import sys

from habc_learner.protocol.cli import main

sys.exit(main())
