"""``python -m driver.exporter ...``: run the exporter (same flags as ``accel-dra exporter``)."""

from driver.exporter.server import main

raise SystemExit(main())
