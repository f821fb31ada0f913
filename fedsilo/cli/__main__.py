"""``python -m fedsilo.cli``: the same as the ``fedsilo`` command."""

import sys

from fedsilo.cli.main import main

sys.exit(main())
