"""``python -m atls_proxy`` is ``atls-proxy``."""

import sys

from atls_proxy.cli import main

sys.exit(main())
