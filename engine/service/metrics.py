"""Prometheus metrics of an intake and a worker, in a registry of their own (no global state).

Names (all prefixed ``signal_``):

* ``events_received_total{route, result}``: events the intake took
  (``accepted``) or refused (``bad_request``, ``unauthorized``,
  ``too_large``, ``timeout``, ``replayed``, ``in_flight``, ``backlog_full``,
  ``draining``, ``unavailable``); a request
  refused before its events could be counted counts as one;
* ``outcomes_total{integration, outcome, reason}``: one per event a worker
  finished; ``reason`` is the drop reason or the failure cause, ``none``
  when there is neither (a delivery): never an empty label;
* ``delivery_latency_seconds{integration}``: from the intake's 200 to the
  event's delivery (drops, failures and dead letters are not deliveries,
  and would skew it);
* ``queue_backlog_events``: events stored and not yet finished by every
  integration (what the intake's bound counts);
* ``integration_lag_events{integration}``: events an integration has not
  finished yet (its own backlog: a failing integration's grows alone);
* ``dead_letters{integration}``: letters waiting for a replay;
* ``token_refreshes_total{integration}``: access tokens this process minted;
* ``destination_responses_total{integration, status}`` and
  ``destination_429_total{integration}``: the destination API's answers, and
  its 429s;
* ``token_endpoint_responses_total{integration, status}``: the token
  endpoint's answers, counted apart: a throttled token endpoint is not a
  throttled API.

No label holds a secret, an event's content or a user id. No ``*_created``
series: they double every counter and say only when the process started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


NO_REASON = "none"  # the reason label of an outcome that has neither a drop reason nor a cause


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # prometheus_client's own switch, for the whole process
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "signal_events_received",
            "Events posted to the intake, by route and result",
            ["route", "result"],
            registry=r,
        )
        self.outcomes = Counter(
            "signal_outcomes",
            "Events finished, by integration, outcome and reason or cause",
            ["integration", "outcome", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "signal_delivery_latency_seconds",
            "From the intake's 200 to the event's delivery",
            ["integration"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge(
            "signal_queue_backlog_events", "Events stored and not yet finished by every integration", registry=r
        )
        self.lag = Gauge(
            "signal_integration_lag_events", "Events an integration has not finished yet", ["integration"], registry=r
        )
        self.dead_letters = Gauge(
            "signal_dead_letters", "Dead letters waiting for a replay", ["integration"], registry=r
        )
        self.refreshes = Counter(
            "signal_token_refreshes", "Access tokens minted by this process", ["integration"], registry=r
        )
        self.responses = Counter(
            "signal_destination_responses", "Destination answers, by status", ["integration", "status"], registry=r
        )
        self.limited = Counter(
            "signal_destination_429", "429 answers from the destination", ["integration"], registry=r
        )
        self.token_responses = Counter(
            "signal_token_endpoint_responses",
            "Token endpoint answers, by status",
            ["integration", "status"],
            registry=r,
        )
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def on_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run ``refresh`` (read the backlog, the dead-letter depth...) before each scrape."""
        self._refreshers.append(refresh)

    async def render(self) -> tuple[bytes, str]:
        for refresh in self._refreshers:
            try:
                await refresh()
            except Exception:  # noqa: BLE001 - a gauge that cannot be read keeps its last value
                pass
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
