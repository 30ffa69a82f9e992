"""Per-client trigger rate limit: a fixed one-minute window counted in the cache."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from django.core.cache import cache
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from config.errors import ApiError
from config.logs import Quieted
from notify.models import Client

logger = logging.getLogger(__name__)


# A trigger the counters' Redis did not count logged a line each, a client's whole rate
# of them (thousands a minute) for as long as Redis was down.
_uncounted = Quieted()


class ClientTriggerRate(BaseThrottle):
    """At most `Client.rate_limit_per_minute` triggers per minute (none set: no limit)."""

    WINDOW = 60
    # The window is counted on the clock of the web process that took the request, and
    # the next request may reach another whose clock is a little behind: the wait told is
    # a second longer, or that one would still count the old minute and refuse it again.
    CLOCK_SKEW = 1

    def allow_request(self, request: Request, view: Any) -> bool:
        client = request.user
        if not isinstance(client, Client) or not client.rate_limit_per_minute:
            return True
        if request.method != "POST":
            # DRF checks throttles before it finds the method's handler: a GET or PUT (a
            # 405) or an OPTIONS, which trigger nothing, took one of the rate each.
            return True
        now = time.time()
        window = int(now // self.WINDOW)
        key = f"norm:trigger-rate:{client.pk}:{window}"
        # A bulk request costs one per event, so it cannot carry a client past its rate.
        cost = view.trigger_cost(request) if hasattr(view, "trigger_cost") else 1
        limit = client.rate_limit_per_minute
        if cost > limit:
            # No minute would ever take it: a 429 would have novu-py retry it for an hour.
            message = (
                f"The bulk's {cost} events exceed this client's rate of {limit} triggers"
                f" per minute: send at most {limit} per request"
            )
            raise ApiError(
                400, "bulk_over_rate", message, [{"field": "events", "message": message}]
            )
        try:
            # add() is a no-op when the key exists: concurrent first requests share one counter.
            cache.add(key, 0, timeout=self.WINDOW * 2)
            count = cache.incr(key, cost)
        except (RedisError, OSError, ValueError) as exc:
            # The counters' Redis is down, or evicted the counter between add() and incr()
            # (incr's ValueError: Redis under maxmemory, local memory culling past its 300
            # keys): triggers go on uncounted rather than fail.
            if (held := _uncounted.due(client.pk)) is not None:
                logger.warning(
                    "trigger rate of client %s not counted: %s (%d more of its triggers "
                    "uncounted since the last such line; one a minute at most)",
                    client.pk,
                    exc,
                    held,
                )
            return True
        self._wait = (window + 1) * self.WINDOW - now + self.CLOCK_SKEW
        if count <= limit:
            return True
        # A refused request spends none of the rate: a bulk refused for its 4 events, with
        # 1 left, would otherwise have refused every trigger until the next minute.
        with contextlib.suppress(RedisError, OSError, ValueError):
            cache.decr(key, cost)
        return False

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)
