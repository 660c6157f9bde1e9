"""The accel-dra benchmark harness (``make bench``; docs/performance.md explains the figures)."""
