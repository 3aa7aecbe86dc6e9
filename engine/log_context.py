"""Which integration the code running now works for, so every log line can name it.

A worker sets it once, in its own task; every task the engine starts from
there (deliveries, token refreshes) inherits it, as asyncio copies context
variables into new tasks. The log formatters read it.
"""

from __future__ import annotations

from contextvars import ContextVar

current_integration: ContextVar[str | None] = ContextVar("current_integration", default=None)

__all__ = ["current_integration"]
