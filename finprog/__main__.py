"""`python -m finprog` (and `accelerate launch -m finprog train ...`): the command line."""

import sys

from finprog.cli import main

sys.exit(main())
