"""`python -m ma2mba …`: the same command line as the `ma2mba` script."""

import sys

from .cli import main

sys.exit(main())
