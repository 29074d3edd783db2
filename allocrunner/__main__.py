"""`python -m allocrunner …` runs the command-line agent.

Threads and locks: none of its own (the commands start the agent's). Owner: the
Python interpreter runs it as the program.
"""

import sys

from allocrunner.cli import main

sys.exit(main())
