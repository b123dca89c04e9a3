"""``python -m runner.memory``: see runner/memory/__init__.py."""
from .cli import main

raise SystemExit(main())
