"""Prometheus: a real Prometheus server (Debian's package) scrapes a real node's /metrics and
answers PromQL about its viewers (RTMP, HTTP-FLV and a polling HLS player)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.flv_reader import HttpFlvReader
from tests.support.processes import FfmpegPublisher, Node
from tests.support.rtmp_client import RtmpClient
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        document = json.load(resp)
    assert document["status"] == "success", document
    return list(document["data"]["result"])


def test_node_metrics_are_prometheus_text(node: Node) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    assert 'arcly_limits_refused_total{arcly_limit="max_connections"' in text
    assert 'target_info{arcly_node_id=' in text and 'service_name="arcly-single"' in text


def test_metrics_can_be_turned_off(node_factory: Callable[..., Node]) -> None:
    node = node_factory("--no-metrics")
    request = urllib.request.Request(f"http://127.0.0.1:{node.http}/metrics")
    with pytest.raises(urllib.error.HTTPError) as off:
        urllib.request.urlopen(request, timeout=10)
    assert off.value.code == 404


def test_metrics_can_have_a_port_of_their_own(node_factory: Callable[..., Node]) -> None:
    node = node_factory("--metrics-listen", "127.0.0.1:0")
    port = int(node.wait_for_log(r"listening protocol=metrics ").rsplit(":", 1)[1].strip('"'))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert b"arcly_limits_refused_total" in resp.read()
    with pytest.raises(urllib.error.HTTPError) as elsewhere:
        urllib.request.urlopen(f"http://127.0.0.1:{node.http}/metrics", timeout=10)
    assert elsewhere.value.code == 404, "not on the public HTTP port"


def test_prometheus_scrapes_viewers_from_a_node(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher], tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: `make test` installs Debian's package as root")
    publish(node, "live/prom")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: arcly
    static_configs:
      - targets: ["127.0.0.1:{node.http}"]
""")
    server = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            stop = asyncio.Event()
            flv = [await HttpFlvReader.open(node.http, "/live/prom.flv") for _ in range(2)]
            rtmp = []
            for _ in range(2):
                client = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
                assert (await client.play("prom")).code == "NetStream.Play.Start"
                rtmp.append(client)

            async def keep_reading() -> None:
                async def flv_viewer(reader: HttpFlvReader) -> None:
                    while not stop.is_set():
                        await reader.next_tag(10)

                async def rtmp_viewer(client: RtmpClient) -> None:
                    while not stop.is_set():
                        await client.read_message(10)

                async def hls_viewer() -> None:  # a player polling its playlist
                    url = f"http://127.0.0.1:{node.http}/live/prom/index.m3u8"
                    request = urllib.request.Request(url, headers={"User-Agent": "hls.js"})
                    while not stop.is_set():
                        await asyncio.to_thread(lambda: urllib.request.urlopen(
                            request, timeout=15).read())
                        await asyncio.sleep(1)

                await asyncio.gather(*map(flv_viewer, flv), *map(rtmp_viewer, rtmp),
                                     hls_viewer())

            reading = asyncio.create_task(keep_reading())
            try:
                def five() -> list[dict[str, Any]] | None:
                    result = query(port, "sum(arcly_viewers)")
                    return result if result and float(result[0]["value"][1]) == 5 else None

                await eventually(lambda: asyncio.to_thread(_quiet, five), timeout=60,
                                 message="Prometheus never saw 5 viewers")
                by_protocol = await asyncio.to_thread(
                    query, port, "sum by (network_protocol_name) (arcly_viewers)")
                per_stream = await asyncio.to_thread(
                    query, port, "sum by (arcly_stream_key) (arcly_stream_viewers)")
                return by_protocol, per_stream
            finally:
                stop.set()
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
                for reader in flv:
                    await reader.close()
                for client in rtmp:
                    await client.close()

        by_protocol, per_stream = asyncio.run(scenario())
        counts = {r["metric"]["network_protocol_name"]: float(r["value"][1]) for r in by_protocol}
        assert counts == {"rtmp": 2.0, "http-flv": 2.0, "hls": 1.0}
        assert [(r["metric"]["arcly_stream_key"], float(r["value"][1]))
                for r in per_stream] == [("live/prom", 5.0)]
        received = query(port, 'arcly_stream_received_bytes_total{arcly_stream_key="live/prom"}')
        assert received and float(received[0]["value"][1]) > 0
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def _quiet(check: Callable[[], Any]) -> Any:
    """Prometheus answers 503 while it starts: not yet."""
    try:
        return check()
    except (OSError, urllib.error.URLError):
        return None
