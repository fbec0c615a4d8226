"""``python -m cobot_hybrid_cli``: the same as the ``cobot-hybrid`` command."""

import sys

from cobot_hybrid_cli import main

sys.exit(main())
