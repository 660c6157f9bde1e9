"""A GPU goes back to the default time slice once no remaining claim asks for another one."""

from __future__ import annotations

from driver.state.checkpoint import CHECKPOINT_FILE
from tests.unit.state.test_prepare import GPU0, Node, claim, node, prepare, ref, sharing

__all__ = ["node"]  # fixture


def test_an_admin_claim_without_sharing_does_not_keep_the_slice(node: Node) -> None:
    p = node.preparer()
    prepare(p, claim("a1", GPU0, config=sharing("Long")))
    prepare(p, claim("m1", GPU0, admin=True))  # a monitoring claim on the same GPU
    p.unprepare_sync([ref(claim("a1"))])
    assert node.slicer.calls == [(GPU0, "Long"), (GPU0, "Default")]
    p.unprepare_sync([ref(claim("m1"))])
    assert node.slicer.calls == [(GPU0, "Long"), (GPU0, "Default")], "nothing left to reset"


def test_the_slice_is_reset_when_the_last_claim_needing_it_goes(node: Node) -> None:
    p = node.preparer()
    prepare(p, claim("a1", GPU0, config=sharing("Long")))
    prepare(p, claim("m1", GPU0, admin=True, config=sharing("Long")))
    p.unprepare_sync([ref(claim("a1"))])
    assert node.slicer.calls == [(GPU0, "Long"), (GPU0, "Long")], "m1 still asks for Long"
    p.unprepare_sync([ref(claim("m1"))])
    assert node.slicer.calls[-1] == (GPU0, "Default")


def test_an_entry_rebuilt_from_its_spec_resets_the_slice(node: Node) -> None:
    prepare(node.preparer(), claim("a1", GPU0, config=sharing("Long")))
    (node.root / "plugin" / CHECKPOINT_FILE).write_text("garbage")
    restarted = node.preparer()
    restarted.recover()  # rebuilt: whether the slice was applied is not in the spec
    restarted.unprepare_sync([ref(claim("a1"))])
    assert node.slicer.calls == [(GPU0, "Long"), (GPU0, "Default")]
    assert node.records() == {}
