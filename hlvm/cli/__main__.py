"""``python -m hlvm.cli`` (as ``torchrun -m hlvm.cli`` needs)."""

import sys

from . import main

sys.exit(main())
