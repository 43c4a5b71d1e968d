"""Requests the HTTP layer answered before the app could read them (http_protocol.py): a head
that is not HTTP (400 `invalid_http_request`) or too large (431). No route ran, so the
request context never saw them: they are counted and logged here, as every other answer is,
in llmaas_requests_total (route `unread`, model empty) and in the access log (its method,
path and duration unknown: null). They used to leave no trace but the client's error.

The server finds this through the lifespan state (UNREAD_STATE), as it finds the drain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gateway.api.middleware import access_fields
from gateway.logs import ACCESS_LOGGER
from gateway.metrics import Metrics
from gateway.request_context import RequestInfo

UNREAD_STATE = "unread"  # its key in the lifespan state (what uvicorn hands the protocol)
UNREAD_ROUTE = "unread"  # the route label of such requests: their path was never read whole


@dataclass(slots=True)
class UnreadRefusals:
    metrics: Metrics
    access_log: bool
    log: logging.Logger = field(default_factory=lambda: logging.getLogger(ACCESS_LOGGER))

    def refused(self, status: int, request_id: str) -> None:
        """Counted and logged without a duration (llmaas_request_duration_seconds leaves them
        out): when a head began is not taken on the path every request takes."""
        self.metrics.requests.labels("", UNREAD_ROUTE, str(status)).inc()
        if self.access_log:  # (refused: no engine was asked, the status an error's)
            fields = access_fields(RequestInfo(request_id, status=status), None, None, None)
            self.log.info("request", extra={"fields": fields})
