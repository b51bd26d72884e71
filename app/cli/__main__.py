"""`python -m app.cli …`: the same entry point as `loupe`, with its exit code."""

import sys

from app.cli import main

sys.exit(main())
