"""When a failed API call is tried again, and how long to wait first: one policy for every caller.

:class:`RetryPolicy` is applied by :class:`driver.kube.client.KubeClient` to every plain request, so callers
see an error only when retrying could not help (or the budget is spent). What is retried is what cannot
have taken effect, or what does no harm when repeated:

- ``429 Too Many Requests`` (API Priority and Fairness, the server refused the request unprocessed) and
  any ``5xx`` that carries ``Retry-After`` (the server asks to be tried again): every verb;
- other ``5xx`` answers and connections lost after the request was sent: reads (``GET``) only -- a
  ``POST`` with ``generateName`` whose answer was lost may have created its object, so writes are left to
  the caller's reconcile loop, which re-reads first;
- a connection that could not be opened (nothing was sent): every verb;
- never a timeout: the server may still be working on the request, and a retry would multiply the wait
  of a caller with a deadline (the kubelet gives a prepare call 45 s).

The wait is the server's ``Retry-After`` when it gives one (never shorter), otherwise an exponential
:class:`Backoff`. A ``Retry-After`` longer than :attr:`RetryPolicy.max_wait` is not waited out inside the
call: the error goes to the caller, whose loop backs off on its own terms (``retry_after`` tells it how
long the server asked for). The sleep function is injectable, so tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

Sleep = Callable[[float], Awaitable[None]]

#: Methods whose repetition does no harm after an ambiguous failure (the answer was lost, not refused).
SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Backoff:
    """Exponential delays: ``base * 2**failures`` up to ``cap``, stretched by up to ``jitter`` (a share of
    the delay) so that many nodes that lost the API server at once do not come back in step."""

    base: float = 0.2
    cap: float = 30.0
    jitter: float = 0.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row (0: the first failure)."""
        step: float = min(self.cap, self.base * 2.0 ** min(failures, 32))
        if self.jitter:
            step = min(self.cap, step * (1 + self.jitter * self.rng.random()))
        return step


def retry_after(value: str | None) -> float | None:
    """The seconds of a ``Retry-After`` header given as a number (what kube-apiserver sends), else None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # the HTTP-date form: no Kubernetes component sends it
    return seconds if seconds >= 0 else None


def is_connect_error(err: BaseException) -> bool:
    """The connection could not be opened: the request never reached the server."""
    return isinstance(err, aiohttp.ClientConnectorError)


def is_transport_error(err: BaseException) -> bool:
    return isinstance(err, OSError | TimeoutError | aiohttp.ClientError)


def is_lost_connection(err: BaseException) -> bool:
    """The connection broke (reset, closed before the answer). A timeout is not one: the request may
    still be running on a slow server, and repeating it would multiply the caller's wait."""
    return isinstance(err, OSError | aiohttp.ClientConnectionError) and not isinstance(err, TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long :class:`~driver.kube.client.KubeClient` retries one request."""

    #: Tries after the first one; 0 turns retrying off.
    retries: int = 3
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.2, cap=5.0, jitter=0.2))
    #: The longest single wait inside a call; a server asking for more gets its error passed on.
    max_wait: float = 5.0
    sleep: Sleep = field(default=asyncio.sleep, compare=False, repr=False)

    def wait_for_status(self, method: str, status: int, asked: float | None, attempt: int) -> float | None:
        """How long to wait before trying again after an answer with ``status``; None: do not retry."""
        if attempt >= self.retries:
            return None
        refused = status == 429 or (status >= 500 and asked is not None)
        if not refused and not (status >= 500 and method in SAFE_METHODS):
            return None
        return self._wait(asked, attempt)

    def wait_for_error(self, method: str, err: BaseException, attempt: int) -> float | None:
        """How long to wait before trying again after a transport error; None: do not retry."""
        if attempt >= self.retries or not is_lost_connection(err):
            return None
        if not is_connect_error(err) and method not in SAFE_METHODS:
            return None
        return self._wait(None, attempt)

    def _wait(self, asked: float | None, attempt: int) -> float | None:
        if asked is not None:
            return asked if asked <= self.max_wait else None
        return min(self.backoff.delay(attempt), self.max_wait)


#: No retries at all (tests of single answers, callers that retry themselves).
NO_RETRY = RetryPolicy(retries=0)
