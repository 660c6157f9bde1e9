"""One module per probe; :data:`PROBES` lists them in the order they run."""

from __future__ import annotations

from driver.conformance.model import Probe
from driver.conformance.probes import (
    accelerator_metrics,
    attribute_profile,
    attribute_selection,
    dra_support,
    driver_runtime,
    gang_scheduling,
    gpu_sharing,
    pod_autoscaling,
    secure_access,
    workload_sandboxing,
)

PROBES: tuple[Probe, ...] = (
    dra_support.PROBE,
    attribute_selection.PROBE,
    secure_access.PROBE,
    driver_runtime.PROBE,
    accelerator_metrics.PROBE,
    gpu_sharing.PROBE,
    workload_sandboxing.PROBE,
    pod_autoscaling.PROBE,
    gang_scheduling.PROBE,
    attribute_profile.PROBE,
)
