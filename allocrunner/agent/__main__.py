"""``python -m allocrunner.agent``: the same as ``allocrunner agent``.

Threads, locks: none of its own (see `allocrunner.agent.command`). Owner: the
interpreter, for ``python -m``.
"""

import sys

from allocrunner.agent.command import main

sys.exit(main())
