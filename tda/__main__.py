"""python -m tda: see tda/cli.py."""

from .cli import main

raise SystemExit(main())
