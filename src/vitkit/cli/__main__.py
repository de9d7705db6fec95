"""``python -m vitkit.cli``: the same as ``vitkit``."""

import sys

from . import main

sys.exit(main())
