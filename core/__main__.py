"""``python -m core VERB ...``: the command-line face of the engine (see core/cli/)."""

import sys

from core.cli import main

sys.exit(main())
