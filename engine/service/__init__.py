"""The engine as a service: an HTTP intake, a durable queue, and workers that deliver from it.

``intake`` is the aiohttp app tracking SDKs and servers post to; ``worker``
reads the queue through :class:`~engine.state.queue.EventQueue` and runs each
event through an :class:`~engine.runtime.Engine`; ``serving`` puts them
together for ``signal-engine serve`` and ``signal-engine worker``. Imported
only by those commands (aiohttp's server, prometheus-client, redis).
"""
