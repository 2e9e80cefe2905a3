"""``python -m dbscope._cli``: the ``dbscope`` command, where its script is not installed."""

import sys

from dbscope._cli import main

sys.exit(main())
