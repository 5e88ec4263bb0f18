"""``python -m hlvm``: the ``hlvm`` command (the same as ``python -m hlvm.cli``)."""

import sys

from .cli import main

sys.exit(main())
