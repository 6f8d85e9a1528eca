"""``python -m milsil.cli``: the same as the ``milsil`` command."""

import sys

from milsil.cli import main

sys.exit(main())
