"""Test-wide settings."""

from __future__ import annotations

import os

from hypothesis import settings

# gRPC's C core logs transport chatter (GOAWAY on server stop) to stderr at info level.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# CI machines have 2 cores shared with the processes the tests start: per-example deadlines only add noise.
settings.register_profile("accel-dra", deadline=None, print_blob=True)
settings.load_profile("accel-dra")
