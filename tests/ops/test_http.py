"""metacollector.http over real sockets: /metrics, /healthz, /readyz, bind handling, shutdown."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import trio
import trio.testing

from metacollector import metrics
from metacollector.http import Readiness, StartupError, relist_check, serve_http

UPSTREAM_NAMES = (
    "meta_collector_server_subscribers",
    "meta_collector_broker_dispatched_events",
    "meta_collector_collector_event_api_server_received",
)


@dataclass
class Served:
    metrics_port: int | None
    health_port: int | None


async def start(
    nursery: trio.Nursery, metrics_bind: str, health_bind: str, readiness: Readiness
) -> Served:
    ports = await nursery.start(serve_http, metrics_bind, health_bind, readiness)
    return Served(*ports)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def url(port: int | None, path: str, host: str = "127.0.0.1") -> str:
    assert port is not None
    return f"http://{host}:{port}{path}"


async def test_metrics_scrape_has_upstream_names_and_negotiates_openmetrics(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    metrics.DISPATCHED_EVENTS.labels(kind="Pod", type="Create").inc(0)
    metrics.zero_initialise(["Pod"])
    served = await start(nursery, "127.0.0.1:0", "127.0.0.1:0", Readiness())
    assert served.metrics_port != served.health_port

    r = await client.get(url(served.metrics_port, "/metrics"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {
        line.split("{")[0].split(" ")[0]
        for line in r.text.splitlines()
        if line and not line.startswith("#")
    }
    for name in UPSTREAM_NAMES:
        assert name in names, name  # exact Go names (counters without _total too)
    assert "meta_collector_broker_dispatched_events_total" not in names  # one name, upstream's
    assert 'meta_collector_broker_dispatched_events{kind="Pod",type="Create"}' in r.text
    assert (
        'meta_collector_collector_event_api_server_received{name="pod-collector",'
        'source="api-server",type="generic"} 0.0' in r.text
    )
    for ours in (
        "metacollector_mailbox_depth",
        "meta_collector_broker_queue_duration_seconds_bucket",
        "metacollector_watch_restarts",
        "process_resident_memory_bytes",
    ):
        assert ours in r.text, ours

    om = await client.get(
        url(served.metrics_port, "/metrics"),
        headers={"accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")

    # the metrics port serves no probes, the health port no metrics
    assert (await client.get(url(served.metrics_port, "/readyz"))).status_code == 404
    assert (await client.get(url(served.health_port, "/metrics"))).status_code == 404
    assert (await client.post(url(served.metrics_port, "/metrics"))).status_code == 405


async def test_readyz_follows_checks_and_healthz_stays_ok(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    state: dict[str, bool | str] = {"sync": "pods: not synced", "grpc": True}
    readiness = Readiness()
    readiness.add_check("reflectors", lambda: state["sync"])
    readiness.add_check("grpc", lambda: state["grpc"])
    served = await start(nursery, "127.0.0.1:0", "127.0.0.1:0", readiness)

    async def probe(path: str) -> httpx.Response:
        return await client.get(url(served.health_port, path))

    r = await probe("/readyz")
    assert r.status_code == 503
    assert r.text == "[-]reflectors failed: pods: not synced\nreadyz check failed\n"
    assert (await probe("/healthz")).status_code == 200

    state["sync"] = True
    r = await probe("/readyz")
    assert (r.status_code, r.text) == (200, "ok\n")

    state["grpc"] = False  # a bare False gets a generic reason
    state["sync"] = "pods: relisting for 12s"
    r = await probe("/readyz")
    assert r.status_code == 503
    assert r.text.splitlines() == [
        "[-]reflectors failed: pods: relisting for 12s",
        "[-]grpc failed: not ready",
        "readyz check failed",
    ]
    h = await probe("/healthz")
    assert (h.status_code, h.text) == (200, "ok\n")


async def test_a_check_that_raises_means_not_ready(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    readiness = Readiness()

    def broken() -> bool:
        raise RuntimeError("boom")

    readiness.add_check("broken", broken)
    served = await start(nursery, "0", "127.0.0.1:0", readiness)
    r = await client.get(url(served.health_port, "/readyz"))
    assert r.status_code == 503 and "[-]broken failed: check raised RuntimeError: boom" in r.text


async def test_shared_address_serves_everything_and_zero_disables_metrics(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shared = await start(nursery, f"127.0.0.1:{port}", f"127.0.0.1:{port}", Readiness())
    assert shared.metrics_port == shared.health_port == port
    for path in ("/metrics", "/healthz", "/readyz"):
        assert (await client.get(url(port, path))).status_code == 200, path

    no_metrics = await start(nursery, "0", "127.0.0.1:0", Readiness())
    assert no_metrics.metrics_port is None and no_metrics.health_port is not None
    assert (await client.get(url(no_metrics.health_port, "/metrics"))).status_code == 404


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def test_all_interfaces_and_ipv6_binds(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    served = await start(nursery, ":0", ":0", Readiness())
    assert (await client.get(url(served.health_port, "/healthz"))).status_code == 200
    assert (await client.get(url(served.metrics_port, "/metrics"))).status_code == 200
    if ipv6_loopback():  # ":port" is dual-stack where the host has IPv6
        assert (await client.get(url(served.health_port, "/healthz", "[::1]"))).status_code == 200
        v6 = await start(nursery, "[::1]:0", "[::1]:0", Readiness())
        assert (await client.get(url(v6.health_port, "/readyz", "[::1]"))).status_code == 200


async def test_busy_port_is_one_clear_startup_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError) as info:
            await serve_http("127.0.0.1:0", f"127.0.0.1:{port}", Readiness())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--health-probe-bind-address: cannot listen on")
    assert f"127.0.0.1:{port}" in message and "in use" in message


@pytest.mark.parametrize(
    ("metrics_bind", "health_bind", "flag"),
    [
        ("8080", ":0", "--metrics-bind-address"),
        ("127.0.0.1:0", ":http", "--health-probe-bind-address"),
        ("127.0.0.1:70000", ":0", "--metrics-bind-address"),
        ("no-such-host.invalid:0", ":0", "--metrics-bind-address"),
    ],
)
async def test_malformed_bind_is_a_startup_error(
    metrics_bind: str, health_bind: str, flag: str
) -> None:
    with pytest.raises(StartupError, match=f"^{flag}: "):
        await serve_http(metrics_bind, health_bind, Readiness())


async def test_cancellation_closes_the_listeners(client: httpx.AsyncClient) -> None:
    async with trio.open_nursery() as inner:
        served = await start(inner, "127.0.0.1:0", "127.0.0.1:0", Readiness())
        assert (await client.get(url(served.health_port, "/healthz"))).status_code == 200
        inner.cancel_scope.cancel()
    # serve_http has returned: nothing listens any more, and the ports can be bound again
    for port in (served.metrics_port, served.health_port):
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as fresh:
                await fresh.get(url(port, "/healthz"))
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            assert port is not None
            again.bind(("127.0.0.1", port))


@dataclass
class FakeReflector:
    plural: str
    synced: trio.Event = field(default_factory=trio.Event)
    relisting_since: float | None = None

    @property
    def resource(self) -> FakeReflector:
        return self


async def test_relist_check_allows_a_relist_shorter_than_the_grace(
    mock_clock: trio.testing.MockClock,
) -> None:
    pods, services = FakeReflector("pods"), FakeReflector("services")
    check: Callable[[], bool | str] = relist_check([pods, services], grace=10)
    assert check() == "pods: not synced; services: not synced"
    pods.synced.set()
    assert check() == "services: not synced"
    services.synced.set()
    assert check() is True

    services.relisting_since = trio.current_time()  # a 410: relist in progress
    mock_clock.jump(9)
    assert check() is True  # still serving the last good state
    mock_clock.jump(2)
    assert check() == "services: relisting for 11s"
    services.relisting_since = None
    assert check() is True

    readiness = Readiness()
    readiness.add_check("reflectors", relist_check([pods], grace=3))
    pods.relisting_since = trio.current_time()
    mock_clock.jump(4)
    assert readiness.status() == (False, {"reflectors": "pods: relisting for 4s"})
