"""A running vendor sandbox plus an HTTP client pointed at it, over real loopback HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic ``Authorization`` header, built by hand so tests see exactly what is sent."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Running:
    """One sandbox app served on a free port, and a session to talk to it."""

    def __init__(self, runner: web.AppRunner, base: str, session: aiohttp.ClientSession, state_key: Any) -> None:
        self.runner = runner
        self.base = base
        self.session = session
        self.state_key = state_key

    @property
    def state(self) -> Any:
        return self.runner.app[self.state_key]

    async def call(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
        raw: str | bytes | None = None,
        form: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        """Send one request; the body is parsed as JSON when it is JSON."""
        kwargs: dict[str, Any] = {"headers": dict(headers or {})}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body)
            kwargs["headers"].setdefault("Content-Type", "application/json")
        if raw is not None:
            kwargs["data"] = raw
        if form is not None:
            kwargs["data"] = form
        async with self.session.request(method, f"{self.base}{path}", **kwargs) as resp:
            text = await resp.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text
            return resp.status, body, resp.headers

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, f"{self.base}/_sandbox/{path}", json=body) as resp:
            return resp.status, await resp.json()


@asynccontextmanager
async def running(module: Any, **config: Any) -> AsyncIterator[Running]:
    """Start ``module``'s sandbox with ``SandboxConfig(**config)`` on loopback; stop it afterwards."""
    runner, base = await module.start_sandbox(module.SandboxConfig(**config), port=0)
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(runner, base, session, module.STATE_KEY)
    finally:
        await runner.cleanup()
