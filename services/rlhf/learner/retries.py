"""Calls to the services that outlast a restart: retried with backoff for up to --service-timeout, and, under
torchrun, failed on every rank together."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable

import grpc

from rlhf.core import distributed
from rlhf.core.batching import QUEUE_FULL_MARK
from rlhf.core.client import RETRYABLE_CODES

log = logging.getLogger("rlhf.learner")

# The channels' codes, and DEADLINE_EXCEEDED, which a channel's retry policy cannot retry: gRPC's deadline spans
# every attempt of one call, so only a fresh call, with a fresh deadline, outlasts a server that hung or restarted
# mid-call.
RETRYABLE = (*RETRYABLE_CODES, grpc.StatusCode.DEADLINE_EXCEEDED)

_JITTER = random.Random()  # its own generator: the run's seeded `random` state stays untouched (resume)


class ServiceDown(Exception):
    """A service stayed unreachable for longer than --service-timeout."""


def retryable(err: grpc.RpcError) -> bool:
    """A code in RETRYABLE; for RESOURCE_EXHAUSTED, only a refusal by a service's admission control (--max-queue),
    not a message over the size limit, which no retry can fix."""
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return QUEUE_FULL_MARK in (err.details() or "")
    return err.code() in RETRYABLE


def with_retries(
    what: str,
    timeout: float,
    fn: Callable,
    *args,
    wait_ready: Callable[[float], None] | None = None,
    abort: Callable[[], bool] = lambda: False,
):
    """fn(*args), retried on a retryable error with exponential backoff until timeout.

    Between attempts, wait_ready(seconds) (a health check) holds off until a restarted server has
    loaded its model: a server accepts calls as soon as its port is bound, before it is SERVING.
    abort() ends the waiting early (a stop was requested: SIGTERM must not wait out --service-timeout).
    """
    deadline, delay = time.monotonic() + timeout, 0.25
    while True:
        try:
            return fn(*args)
        except grpc.RpcError as err:
            if not retryable(err):
                raise
            if abort():
                raise ServiceDown(f"{what}: stop requested while the service was unavailable") from err
            if time.monotonic() + delay > deadline:
                raise ServiceDown(
                    f"{what} did not answer for {timeout:.0f}s (--service-timeout): {err.code().name}: {err.details()}"
                ) from err
            log.warning("retrying", extra={"service": what, "code": err.code().name, "delay_s": delay})
            sleep_unless(abort, delay * _JITTER.uniform(0.5, 1.0))  # jitter: retries from many callers spread out
            delay = min(2 * delay, 5.0)
            if wait_ready is not None and not abort():
                with contextlib.suppress(TimeoutError, grpc.RpcError):
                    wait_ready(max(0.1, deadline - time.monotonic()), abort=abort)
            if abort():  # not one more attempt: its deadline could be --service-timeout itself
                raise ServiceDown(f"{what}: stop requested while the service was unavailable") from err


def sleep_unless(abort: Callable[[], bool], seconds: float, tick: float = 0.05) -> None:
    """time.sleep(seconds), cut short once abort() is true."""
    deadline = time.monotonic() + seconds
    while not abort() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(tick, left))


def on_all_ranks(fn: Callable, *args):
    """fn(*args); if it failed with a service error here or on any other rank, every rank raises (its own error,
    or ServiceDown naming another rank), so that all ranks go on to the next collective together, or all take
    the checkpoint-and-stop path together. In one process: fn(*args) as it is."""
    error: BaseException | None = None
    result = None
    try:
        result = fn(*args)
    except (ServiceDown, grpc.RpcError) as err:
        error = err
    if distributed.any_rank(error is not None):
        raise error or ServiceDown("another learner rank lost a service (see its log)")
    return result
