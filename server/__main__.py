"""`python -m server ...` is the `recserve` command."""

import sys

from server.cli import main

sys.exit(main())
