"""``python -m greg_ood.data check --suite S`` (see :mod:`greg_ood.data.check`)."""
import sys

from .check import main

sys.exit(main())
