"""`python -m allocrunner …` runs the command-line agent."""

import sys

from allocrunner.cli import main

sys.exit(main())
