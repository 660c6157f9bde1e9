"""What probes produce: checks (subtests) with an outcome and evidence, grouped into probe results."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from driver.conformance.context import ProbeContext

Outcome = Literal["passed", "failed", "skipped"]


class CheckFailedError(Exception):
    """Raised inside a check: the platform does not do what the requirement asks (the message says how)."""


class CheckSkippedError(Exception):
    """Raised inside a check: it cannot run here (the message says why and what would enable it)."""


@dataclass
class CheckResult:
    name: str
    outcome: Outcome
    message: str
    duration: float = 0.0
    #: Supporting lines for the report: what pods printed, conditions, the series found.
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Probe:
    """One probe: a module under ``driver.conformance.probes``."""

    name: str
    #: The junit test name (``TestSecureAcceleratorAccess``), also the evidence anchor.
    test: str
    title: str
    #: Checklist requirement ids this probe gives evidence for (empty: reported, not in the checklist).
    requirements: tuple[str, ...]
    run: Callable[[ProbeContext], Awaitable[None]]
    #: Default seconds for the whole probe.
    timeout: float = 600.0
    #: Checks that must run and pass before the suite calls its requirements Implemented (others, such as
    #: a check that does not apply to every platform, may be skipped).
    required: tuple[str, ...] = ()
    #: Checks of which at least one must pass (a requirement met by any one of several ways, such as the
    #: sharing strategies of ``gpu_sharing``); those a platform does not offer skip.
    required_any: tuple[str, ...] = ()
    #: Reported beside the evidence, never in it: a check of this project's own standards, which real
    #: drivers may not follow (its results go to ``results/advisory/`` and never fail the run).
    advisory: bool = False
    #: Allocation modes the probe works in (a DRA-only probe is skipped in device-plugin mode).
    modes: tuple[str, ...] = ("dra",)


@dataclass
class ProbeResult:
    probe: str
    test: str
    title: str
    requirements: tuple[str, ...]
    outcome: Outcome
    message: str
    checks: list[CheckResult]
    duration: float
    timeout: float
    #: This probe's records in the run log: ``records[start:end]``.
    records: tuple[int, int] = (0, 0)
    #: When the probe started (seconds since the epoch).
    started: float = 0.0
    #: Probe-specific facts for the report (device tables, metric names found, versions).
    data: dict[str, Any] = field(default_factory=dict)
    #: Stopped by Ctrl-C: its checks say nothing about the platform.
    interrupted: bool = False
    #: The probe's required checks (see :attr:`Probe.required`).
    required: tuple[str, ...] = ()
    #: The probe's ``required_any`` checks (see :attr:`Probe.required_any`).
    required_any: tuple[str, ...] = ()
    advisory: bool = False

    def unverified(self) -> list[str]:
        """What keeps the requirement from being shown: required checks that did not run (skipped or never
        reached), and ``one of A, B`` when none of the ``required_any`` checks passed."""
        ran = {c.name for c in self.checks if c.outcome != "skipped"}
        missing = [name for name in self.required if name not in ran]
        if self.required_any and not self.shown_any():
            missing.append(f"one of {', '.join(self.required_any)}")
        return missing

    def shown_any(self) -> list[str]:
        """The ``required_any`` checks that passed, in order."""
        passed = {c.name for c in self.checks if c.outcome == "passed"}
        return [name for name in self.required_any if name in passed]


def summarize(checks: list[CheckResult]) -> tuple[Outcome, str]:
    """A probe fails when a check failed, is skipped when every check was, and passes otherwise."""
    failed = [c for c in checks if c.outcome == "failed"]
    if failed:
        return "failed", "; ".join(f"{c.name}: {c.message}" for c in failed)
    if checks and all(c.outcome == "skipped" for c in checks):
        return "skipped", "; ".join(f"{c.name}: {c.message}" for c in checks)
    if not checks:
        return "failed", "the probe ran no checks"
    skipped = [c.name for c in checks if c.outcome == "skipped"]
    passed = len(checks) - len(skipped)
    note = f" ({len(skipped)} skipped: {', '.join(skipped)})" if skipped else ""
    return "passed", f"{passed} check(s) passed{note}"
