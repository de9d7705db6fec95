"""``python -m vitkit`` (and ``torchrun -m vitkit``): the command-line interface."""

import sys

from .cli import main

sys.exit(main())
