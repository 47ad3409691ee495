"""The opt-in metrics port: a real aiohttp server on loopback, scraped over HTTP."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from naas.core.topology import LinkView, MemberView, Reach, Topology
from naas.daemon.metrics_server import serve_metrics


def topology(rx: int) -> Topology:
    me = MemberView(1, "desktop", False, "172.32.0.5/16", "02:4e:00:00:00:01", Reach.SELF)
    peer = MemberView(
        2, "master", True, "172.32.0.1", "02:4e:00:00:00:02", Reach.DIRECT, rtt_ms=0.5, rx_bytes=rx
    )
    return Topology("office", 1, 1417, (me, peer), (LinkView(1, 2, 0.5),), drops={"too_short": 3})


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        return str(answer.read().decode())


def test_each_scrape_is_a_fresh_snapshot_and_only_metrics_is_served() -> None:
    async def main() -> None:
        counter = {"rx": 100}
        runner = await serve_metrics("127.0.0.1", 0, lambda: topology(counter["rx"]))
        try:
            port = runner.addresses[0][1]
            url = f"http://127.0.0.1:{port}/metrics"
            first = await asyncio.to_thread(scrape, url)
            counter["rx"] = 250
            second = await asyncio.to_thread(scrape, url)
            with pytest.raises(urllib.error.HTTPError):
                await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/")
        finally:
            await runner.cleanup()
        values = []
        for text in (first, second):
            families = {f.name: f for f in text_string_to_metric_families(text)}
            sample = next(s for s in families["naas_peer_rx_bytes"].samples if s.name.endswith("_total"))
            assert sample.labels == {"network": "office", "peer": "master"}
            values.append(sample.value)
            drops = families["naas_drops"].samples[0]
            assert drops.labels["reason"] == "too_short" and drops.value == 3
        assert values == [100, 250]

    asyncio.run(main())


def test_a_busy_port_raises_and_leaves_nothing_running() -> None:
    async def main() -> None:
        first = await serve_metrics("127.0.0.1", 0, lambda: topology(0))
        try:
            port = first.addresses[0][1]
            with pytest.raises(OSError):
                await serve_metrics("127.0.0.1", port, lambda: topology(0))
        finally:
            await first.cleanup()

    asyncio.run(main())
