"""`python -m opd_core ...` is the same command as `opd-lab ...` (the launcher uses it for child runs)."""

from opd_core.cli import main

raise SystemExit(main())
