"""``python -m compression``: see ``compression.cli`` for the arguments."""

from compression.cli import main

raise SystemExit(main())
