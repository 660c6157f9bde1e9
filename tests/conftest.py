"""Test-wide settings."""

from __future__ import annotations

import os

# gRPC's C core logs transport chatter (GOAWAY on server stop) to stderr at info level.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
