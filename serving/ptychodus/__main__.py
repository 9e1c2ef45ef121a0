"""``python -m serving.ptychodus [ptychodus arguments]``: same as ``ptychopinn-ptychodus``."""

import sys

from serving.ptychodus.registration import main

sys.exit(main())
