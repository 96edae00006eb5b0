"""Before any model loads, every service the run needs is checked: a wrong address fails in seconds
with one line that names the flag, instead of after minutes of loading and retrying.

For each --policy replica, --reward and --reference:
1. something answers at the address within --connect-timeout;
2. it is the kind of service the flag names (server reflection lists what it serves);
3. it reports SERVING within --service-timeout (it may still be loading its model).

A stop request (Ctrl-C, SIGTERM) ends every wait at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from rlhf.core.client import BaseClient, ServiceError, wait_until_connected, wrong_service
from rlhf.core.errors import UserError

log = logging.getLogger("rlhf.learner")


def check_service(
    flag: str,
    client: BaseClient,
    connect_timeout: float,
    service_timeout: float,
    abort: Callable[[], bool] = lambda: False,
) -> None:
    """Raise UserError (one line, naming `flag` and the address) unless the service is up and right."""
    where = f"{flag} {client.target}"
    if not wait_until_connected(client, connect_timeout, abort):
        if abort():
            raise UserError(f"stop requested while connecting to {where}")
        tls = " or its TLS handshake fails (check --service-tls-*)" if client.options.tls_ca else ""
        raise UserError(
            f"{where}: nothing answers there{tls} (no connection within {connect_timeout:g}s, --connect-timeout)"
        )
    try:
        problem = wrong_service(client, client.SERVICE, timeout=min(5.0, service_timeout))
    except ServiceError as err:
        raise UserError(
            f"{where}: {err.code().name}: {err.details()} (check --auth-token-file and --service-tls-*)"
        ) from None
    if problem:
        raise UserError(f"{flag}: {problem}")
    try:
        try:
            client.wait_until_serving(1.0, abort=abort)
        except TimeoutError:
            log.warning(
                "waiting for the service to report SERVING (loading its model?)",
                extra={"flag": flag, "target": client.target},
            )
            client.wait_until_serving(service_timeout, abort=abort)
    except TimeoutError as err:
        if abort():
            raise UserError(f"{where}: stop requested while waiting for it to serve") from None
        raise UserError(f"{where}: {err} (--service-timeout)") from None


def check_services(
    services, connect_timeout: float, service_timeout: float, abort: Callable[[], bool] = lambda: False
) -> None:
    """check_service for every replica, the reward and the reference service of a learner's Services."""
    for flag, client in [
        *(("--policy", p) for p in services.policies),
        *(("--reward", r) for r in services.rewards),
        ("--reference", services.reference),
    ]:
        check_service(flag, client, connect_timeout, service_timeout, abort)
