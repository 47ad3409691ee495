"""The opt-in metrics port: Prometheus text on ``GET /metrics``, nothing else.

Theory of operation. ``naas up --metrics 127.0.0.1:9640`` (or ``naas agent``, ``naas
pop``) makes the agent serve its live ``Topology`` (core/topology.py) rendered by
views/metrics.py on that address. Every scrape takes a fresh snapshot from the NodeCore;
there is no state here. Off unless asked for, and meant for a local address: the
counters name members, so put a scraper next to it rather than
exposing it to the underlay. aiohttp is already the PoP's HTTP server.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from naas.core.topology import Topology
from naas.views.metrics import CONTENT_TYPE, metrics_text


async def serve_metrics(host: str, port: int, snapshot: Callable[[], Topology]) -> web.AppRunner:
    """Start serving; the caller awaits ``runner.cleanup()`` to stop."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=metrics_text(snapshot()), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
