"""Garbage in the plugin and CDI directories at start: files, directories, FIFOs, symbolic links and wrong
modes where the plugin's state files, lock and sockets belong, a deleted or broken checkpoint, leftovers of
other drivers. Every start must serve and publish within a bounded time, keep every prepared claim guarded,
move aside (never delete, never follow) what is not its own, and leave other drivers' files alone.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from driver.state.checkpoint import CHECKPOINT_FILE, checksum
from driver.state.lock import LOCK_FILE_NAME
from tests.chaos.conftest import Chaos
from tests.chaos.harness import DRIVER, ChaosError, ChaosNode, Claim
from tests.chaos.invariants import prepared

Planter = Callable[[ChaosNode, random.Random], None]


def _spec_name(uid: str) -> str:
    return f"k8s.{DRIVER}-gpu_{uid}.json"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    _remove(path)
    make(path)


def spec_named_dir(node: ChaosNode, rng: random.Random) -> None:
    path = node.cdi / _spec_name(f"junk-{secrets.token_hex(4)}")
    path.mkdir()
    (path / "inside").write_text("x")


def spec_named_fifo(node: ChaosNode, rng: random.Random) -> None:
    os.mkfifo(node.cdi / _spec_name(f"fifo-{secrets.token_hex(4)}"))


def spec_named_link(node: ChaosNode, rng: random.Random) -> None:
    target = rng.choice(["/dev/null", str(node.root / "nowhere"), "/etc/hostname"])
    (node.cdi / _spec_name(f"link-{secrets.token_hex(4)}")).symlink_to(target)


def checkpoint_deleted(node: ChaosNode, rng: random.Random) -> None:
    _remove(node.plugin_dir / CHECKPOINT_FILE)


def checkpoint_dir(node: ChaosNode, rng: random.Random) -> None:
    _replace(node.plugin_dir / CHECKPOINT_FILE, lambda p: p.mkdir())


def checkpoint_fifo(node: ChaosNode, rng: random.Random) -> None:
    _replace(node.plugin_dir / CHECKPOINT_FILE, os.mkfifo)


def checkpoint_link(node: ChaosNode, rng: random.Random) -> None:
    path = node.plugin_dir / CHECKPOINT_FILE
    copy = node.root / f"copy-{secrets.token_hex(3)}.json"
    if path.is_file() and not path.is_symlink():
        copy.write_bytes(path.read_bytes())
    target = rng.choice([copy, node.root / "nowhere"])
    _replace(path, lambda p: p.symlink_to(target))


def checkpoint_garbage(node: ChaosNode, rng: random.Random) -> None:
    path = node.plugin_dir / CHECKPOINT_FILE
    raw = path.read_bytes() if path.is_file() and not path.is_symlink() else b"{}"
    choice = rng.randrange(3)
    garbage = [raw[: len(raw) // 2], os.urandom(64), b'{"kind": "AccelDraCheckpoint", "version": 2}'][choice]
    _replace(path, lambda p: p.write_bytes(garbage))


def checkpoint_wrong_types(node: ChaosNode, rng: random.Random) -> None:
    """Valid checksum, values of the wrong type: what a buggy writer would leave."""
    path = node.plugin_dir / CHECKPOINT_FILE
    if not path.is_file() or path.is_symlink():
        return
    try:
        document = json.loads(path.read_bytes())
    except ValueError:
        return  # already garbage
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        return
    for record in document.get("data", {}).get("claims", {}).values():
        for device in record.get("devices", []):
            device["adminAccess"] = rng.choice(["false", 0, None, "true"])
    document["checksum"] = checksum(document)
    path.write_text(json.dumps(document))


def checkpoint_mode(node: ChaosNode, rng: random.Random) -> None:
    path = node.plugin_dir / CHECKPOINT_FILE
    if path.is_file() and not path.is_symlink():
        path.chmod(rng.choice([0o000, 0o666, 0o777, 0o400]))


def lock_junk(node: ChaosNode, rng: random.Random) -> None:
    path = node.plugin_dir / LOCK_FILE_NAME
    make = rng.choice(
        [
            lambda p: p.mkdir(),
            os.mkfifo,
            lambda p: p.symlink_to(node.root / "nowhere"),
            lambda p: p.write_text("x"),
        ]
    )
    _replace(path, make)


def socket_junk(node: ChaosNode, rng: random.Random) -> None:
    path = rng.choice([node.plugin_dir / "dra.sock", node.registry / f"{DRIVER}-reg.sock"])
    make = rng.choice([lambda p: p.mkdir(), os.mkfifo, lambda p: p.write_text("x")])
    _replace(path, make)


def temporaries(node: ChaosNode, rng: random.Random) -> None:
    token = secrets.token_hex(3)
    (node.plugin_dir / f".{CHECKPOINT_FILE}.1-{token}.tmp").write_text("half")
    (node.cdi / f".k8s.{DRIVER}-gpu_x.json.1-{token}.tmp").mkdir()
    (node.cdi / f".k8s.{DRIVER}-gpu_y.json.2-{token}.tmp").write_text("half")


def foreign_files(node: ChaosNode, rng: random.Random) -> None:
    """Other drivers' specs and unrelated files: never touched."""
    token = secrets.token_hex(3)
    (node.cdi / f"k8s.other.example.com-gpu_{token}.json").write_text('{"cdiVersion": "0.3.0"}')
    (node.cdi / f"notes-{token}.txt").write_text("kept")
    (node.cdi / f"k8s.{DRIVER}-gpu_{token}.yaml").write_text("kept: yes")


def directory_modes(node: ChaosNode, rng: random.Random) -> None:
    rng.choice([node.cdi, node.plugin_dir]).chmod(rng.choice([0o000, 0o777, 0o500]))


PLANTERS: tuple[Planter, ...] = (
    spec_named_dir,
    spec_named_fifo,
    spec_named_link,
    checkpoint_deleted,
    checkpoint_dir,
    checkpoint_fifo,
    checkpoint_link,
    checkpoint_garbage,
    checkpoint_wrong_types,
    checkpoint_mode,
    lock_junk,
    socket_junk,
    temporaries,
    foreign_files,
    directory_modes,
)


def foreign(node: ChaosNode) -> set[str]:
    return {
        p.name
        for p in node.cdi.iterdir()
        if not p.name.startswith(f"k8s.{DRIVER}-gpu_")
        and ".aside-" not in p.name
        and not p.name.endswith(".tmp")
    }


async def guarded(node: ChaosNode, holder: Claim, rng: random.Random) -> None:
    """A new claim for ``holder``'s device is refused (unless one of them has admin access)."""
    if holder.admin:
        return
    intruder = await node.create_claim(f"intruder-{secrets.token_hex(3)}", holder.device)
    answer = await node.call("prepare", [intruder.ref])
    error = answer.errors.get(intruder.uid, "")
    if f"already prepared for claim default/{holder.name}" not in error:
        raise ChaosError(f"{holder} does not guard {holder.device} any more: {answer}\n{node.log_tail()}")


async def test_garbage_at_start(node: ChaosNode, chaos: Chaos) -> None:
    rng = chaos.rng
    claims = await node.create_claims(rng, 6)
    node.plugin_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    await node.start()
    answer = await node.call("prepare", [c.ref for c in claims])
    model = set(answer.devices)
    for _ in range(chaos.count(15)):
        chaos.case()
        await (node.stop() if rng.random() < 0.5 else node.kill())
        for directory in (node.cdi, node.plugin_dir):
            directory.chmod(0o755 if directory == node.cdi else 0o750)
        planted = rng.sample(PLANTERS, rng.randint(1, 4))
        for plant in planted:
            plant(node, rng)
        others = foreign(node)
        try:
            await node.start()
            await node.wait_published()
        except AssertionError as err:
            raise ChaosError(f"after {[p.__name__ for p in planted]}: {err}") from None
        node.check()
        if prepared(node.plugin_dir) != model:
            raise ChaosError(
                f"after {[p.__name__ for p in planted]}: checkpoint holds {sorted(prepared(node.plugin_dir))}, "
                f"the kubelet was told {sorted(model)}"
            )
        missing = others - foreign(node)
        if missing:
            raise ChaosError(f"other files were touched: {sorted(missing)}")
        held = [c for c in claims if c.uid in model]
        if held:
            await guarded(node, rng.choice(held), rng)
        # Keep the node busy: unprepare one, prepare another.
        if held and rng.random() < 0.5:
            gone = rng.choice(held)
            await node.call("unprepare", [gone.ref])
            model.discard(gone.uid)
        answer = await node.call("prepare", [rng.choice(claims).ref])
        model |= set(answer.devices)
        node.check()
    if node.tracebacks():
        raise ChaosError("unexpected errors logged:\n" + node.log_tail(80))
    await node.stop()
