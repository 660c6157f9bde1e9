"""Reading an accelerator-metrics endpoint the way the upstream AI-conformance test does.

A sample counts as per-accelerator only when it carries one of the identity label keys (``uuid``,
``pci_bus_id``, ``gpu``, ...); empty label values and NaN samples are dropped. Metric names come from the
vendor settings or are auto-detected: utilization by ``util`` in the name, memory by ``fb_used``,
``mem_used``, ``memory_used``, ``vram_used`` or ``hbm_used``; temperature, power and interconnect by the
upstream test's optional patterns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

MEMORY_PATTERNS = ("fb_used", "mem_used", "memory_used", "vram_used", "hbm_used")
OPTIONAL_PATTERNS: Mapping[str, re.Pattern[str]] = {
    "temperature": re.compile(r"temp|temperature", re.IGNORECASE),
    "power": re.compile(r"power|watt|energy", re.IGNORECASE),
    "interconnect": re.compile(r"nvlink|pcie_tx|pcie_rx|bandwidth|xgmi", re.IGNORECASE),
}
#: Utilization series that are not the accelerator's compute utilization.
_NOT_COMPUTE = re.compile(r"mem|enc|dec|copy", re.IGNORECASE)


class MetricsFormatError(Exception):
    """The endpoint did not answer Prometheus text exposition."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float

    def show(self) -> str:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        return f"{self.name}{{{labels}}} {self.value:g}"


def parse(text: str) -> list[Sample]:
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as err:
        raise MetricsFormatError(f"not Prometheus text exposition: {err}") from err
    samples = []
    for family in families:
        for s in family.samples:
            if s.value is None or math.isnan(s.value):
                continue
            labels = {k: v for k, v in s.labels.items() if v != ""}
            samples.append(Sample(s.name, labels, float(s.value)))
    return samples


def identity(sample: Sample, identity_labels: Sequence[str]) -> dict[str, str]:
    return {k: sample.labels[k] for k in identity_labels if k in sample.labels}


def per_accelerator(samples: Iterable[Sample], identity_labels: Sequence[str]) -> list[Sample]:
    return [s for s in samples if identity(s, identity_labels)]


def names(samples: Iterable[Sample]) -> list[str]:
    return sorted({s.name for s in samples})


def utilization_candidates(candidates: Sequence[str]) -> list[str]:
    """Compute-utilization metric names (``util`` in the name), compute ones before memory/copy/codec ones."""
    matches = [n for n in candidates if "util" in n.lower()]
    preferred = [n for n in matches if not _NOT_COMPUTE.search(n.lower().split("util")[0])]
    return preferred + [n for n in matches if n not in preferred]


def memory_candidates(candidates: Sequence[str]) -> list[str]:
    return [n for n in candidates if any(p in n.lower() for p in MEMORY_PATTERNS)]


def detect_utilization(candidates: Sequence[str]) -> str | None:
    """The compute-utilization metric among per-accelerator metric names, by name alone."""
    return next(iter(utilization_candidates(candidates)), None)


def detect_memory(candidates: Sequence[str]) -> str | None:
    return next(iter(memory_candidates(candidates)), None)


def accelerator_count(samples: Iterable[Sample], identity_labels: Sequence[str]) -> int:
    """How many accelerators the samples name (distinct identity-label values)."""
    return len({tuple(sorted(identity(s, identity_labels).items())) for s in samples} - {()})


def widest(
    samples: Sequence[Sample], candidates: Sequence[str], identity_labels: Sequence[str]
) -> str | None:
    """The candidate whose series cover the most accelerators; the earlier one on a tie.

    A per-container or per-pod series (``..._container_gpu_utilization``) names only the accelerators that
    are allocated, so it must not be taken for the per-accelerator metric when one covers every device.
    """
    coverage = {n: accelerator_count(series(samples, n), identity_labels) for n in candidates}
    return max(candidates, key=lambda n: coverage[n], default=None)


def detect_optional(kind: str, candidates: Sequence[str]) -> list[str]:
    return [n for n in candidates if OPTIONAL_PATTERNS[kind].search(n)]


def series(samples: Iterable[Sample], name: str) -> list[Sample]:
    return [s for s in samples if s.name == name]


def attributed_to(
    samples: Iterable[Sample], pod: str, namespace: str, pod_label: str, namespace_label: str
) -> list[Sample]:
    """Samples naming this pod (and its namespace, where the exporter labels it)."""
    return [
        s
        for s in samples
        if s.labels.get(pod_label) == pod and s.labels.get(namespace_label, namespace) == namespace
    ]
