"""``python -m zoo.generate --checkpoint DIR --prompt TEXT`` (see :mod:`zoo.generate.cli`)."""

import sys

from zoo.generate.cli import main

sys.exit(main())
