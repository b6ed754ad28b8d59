"""``python -m hiw_monitor`` is the same as the ``hiw-monitor`` command."""

from hiw_monitor.cli import main

raise SystemExit(main())
