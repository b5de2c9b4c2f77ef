"""``python -m vstream``."""

from .cli import main

raise SystemExit(main())
