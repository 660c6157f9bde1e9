"""The plugin's sockets are never reachable by other users, not even for an instant at start-up."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver.plugin import server as plugin_server


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="adra-", dir="/tmp") as root:  # unix socket paths are short
        yield Path(root)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


class Observed:
    """The public socket path's mode at each moment a connection could first be queued or served."""

    def __init__(self, public: Path) -> None:
        self.public = public
        self.modes: list[tuple[str, int | None]] = []

    def record(self, moment: str) -> None:
        try:
            mode: int | None = stat.S_IMODE(os.lstat(self.public).st_mode)
        except FileNotFoundError:
            mode = None
        self.modes.append((moment, mode))


@pytest.mark.usefixtures("permissive_umask")
async def test_socket_is_private_from_the_moment_it_can_be_reached(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = socket_dir / "dra.sock"
    observed = Observed(public)
    real_server = grpc.aio.server

    def watched_server(*args: Any, **kwargs: Any) -> Any:
        server = real_server(*args, **kwargs)
        add_port, start = server.add_insecure_port, server.start

        def add_insecure_port(address: str) -> int:
            port = add_port(address)  # binds and listens: connections queue from here on
            observed.record("listening")
            return port

        async def started() -> None:
            await start()
            observed.record("serving")

        server.add_insecure_port, server.start = add_insecure_port, started
        return server

    monkeypatch.setattr(plugin_server.grpc.aio, "server", watched_server)
    server = await plugin_server._serve(str(public), lambda s: None)
    try:
        assert observed.modes[-1] == ("serving", 0o600)
        exposed = [(moment, oct(mode)) for moment, mode in observed.modes if mode not in (None, 0o600)]
        assert exposed == [], "the socket was reachable with a mode other than 0600"
        assert stat.S_ISSOCK(os.lstat(public).st_mode)
        assert sorted(p.name for p in socket_dir.iterdir()) == ["dra.sock"]  # no private dir left
    finally:
        await server.stop(None)


async def test_something_else_at_the_socket_path_is_moved_aside(socket_dir: Path) -> None:
    public = socket_dir / "dra.sock"
    public.mkdir()
    (public / "evidence").write_text("kept")
    server = await plugin_server._serve(str(public), lambda s: None)
    try:
        assert stat.S_ISSOCK(os.lstat(public).st_mode)
        (aside,) = [p for p in socket_dir.iterdir() if p.name.startswith("dra.sock.aside-")]
        assert (aside / "evidence").read_text() == "kept"
    finally:
        await server.stop(None)
