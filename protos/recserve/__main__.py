"""`python -m recserve ...` is the `recserve` command."""

import sys

from recserve.server.cli import main

sys.exit(main())
