"""``python -m demo``: the same as ``hart demo``."""
from demo.app import main

raise SystemExit(main())
