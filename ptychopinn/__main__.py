"""``python -m ptychopinn``: the same as the ``ptychopinn`` console script."""

import sys

from ptychopinn.cli import main

sys.exit(main())
