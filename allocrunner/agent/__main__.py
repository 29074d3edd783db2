"""``python -m allocrunner.agent``: the same as ``allocrunner agent``."""

import sys

from allocrunner.agent.command import main

sys.exit(main())
