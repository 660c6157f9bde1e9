"""A plugin killed while it saves the checkpoint it rebuilt from a corrupt one loses no prepared claim.

Until the rebuilt checkpoint replaces it, the corrupt file stays where it is: the next start finds it
corrupt again and rebuilds again, instead of taking the node for a fresh one (which would delete every CDI
spec as an orphan and hand prepared GPUs to new claims).
"""

from __future__ import annotations

import signal

import pytest

from driver.kube.client import KubeClient
from driver.sim.kubelet import KubeletError, SimKubelet
from tests.integration.conftest import NodeDirs, StartPlugin
from tests.integration.node_state_claims import DRIVER, GPU0, allocated_claim, ref, result


async def test_sigkill_while_saving_the_rebuilt_checkpoint_loses_no_claim(
    node_dirs: NodeDirs, start_plugin: StartPlugin, kubelet: SimKubelet, kube: KubeClient
) -> None:
    boot = node_dirs.root / "boot_id"
    boot.write_text("boot-1\n")
    extra = ("--boot-id-file", str(boot))
    kept = await allocated_claim(kube, "kept", [result("gpu", GPU0)])
    first = await start_plugin(extra=extra)
    await first.wait_log("registered with kubelet")
    await kubelet.prepare(DRIVER, [ref(kept)])
    assert await first.terminate() == 0

    checkpoint = node_dirs.plugin_dir(DRIVER) / "checkpoint.json"
    checkpoint.write_text(checkpoint.read_text().replace("PrepareCompleted", "PrepareCompleteD"))
    crashing = await start_plugin(extra=extra, env={"ACCEL_DRA_CRASH_AT": "checkpoint:tmp-written"})
    assert await crashing.wait() == -signal.SIGKILL
    assert crashing.matching("checkpoint rebuilt from CDI specs"), "died elsewhere than saving the rebuild"

    restarted = await start_plugin(extra=extra)
    await restarted.wait_log("registered with kubelet")
    spec = node_dirs.cdi / f"k8s.{DRIVER}-gpu_{kept['metadata']['uid']}.json"
    assert spec.exists(), "the prepared claim's CDI spec was removed as an orphan"
    assert restarted.matching("checkpoint rebuilt from CDI specs")
    intruder = await allocated_claim(kube, "intruder", [result("gpu", GPU0)])
    with pytest.raises(KubeletError, match=r"already prepared for claim default/kept"):
        await kubelet.prepare(DRIVER, [ref(intruder)])
    prepared = await kubelet.prepare(DRIVER, [ref(kept)])
    assert prepared[kept["metadata"]["uid"]][0].device_name == GPU0
