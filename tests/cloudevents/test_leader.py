"""Leader election: client-go's decisions as a state machine, and the trio driver against an
in-memory Lease API (409 on a stale resourceVersion) on trio's MockClock."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from metacollector.kube.leader import (
    JITTER_FACTOR,
    LEASE_DURATION,
    RETRY_PERIOD,
    Callbacks,
    ElectionConfig,
    Elector,
    LeaseRecord,
    State,
    lease_body,
    micro_time,
    parse_lease,
    run_election,
)

WALL = datetime(2026, 1, 1, tzinfo=UTC)


def config(identity: str, **kw: float) -> ElectionConfig:
    return ElectionConfig(identity=identity, namespace="falco", name="mc", **kw)  # type: ignore[arg-type]


def test_state_machine_acquire_renew_respect_and_take_over() -> None:
    a = Elector(config("a"))
    a.observe(None, "", 0.0)
    first = a.decide(0.0, WALL, {})
    assert first is not None and first.resource_version is None  # create
    assert (first.record.holder, first.record.transitions) == ("a", 0)
    assert first.record.acquire_time == first.record.renew_time == "2026-01-01T00:00:00.000000Z"
    assert a.succeeded(first.record, "10", 0.0) and a.state is State.LEADER
    renew = a.decide(2.0, WALL + timedelta(seconds=2), {"w": "5"})
    assert renew is not None and renew.resource_version == "10"
    assert renew.record.acquire_time == first.record.acquire_time  # kept while renewing
    assert renew.record.renew_time == "2026-01-01T00:00:02.000000Z"
    assert renew.record.annotations == {"w": "5"}

    b = Elector(config("b"))
    b.observe(renew.record, "11", 3.0)
    assert b.decide(3.0, WALL, {}) is None  # valid for 15 s from when *b* saw it change
    b.observe(renew.record, "11", 17.9)  # unchanged: the observation time stays 3.0
    assert b.decide(17.9, WALL, {}) is None
    take = b.decide(18.0, WALL, {})
    assert take is not None and take.record.holder == "b"
    assert take.record.transitions == 1 and take.record.annotations == {"w": "5"}  # carried


def test_leader_stops_after_renew_deadline_before_anyone_may_take_over() -> None:
    a = Elector(config("a"))
    a.observe(None, "", 0.0)
    write = a.decide(0.0, WALL, {})
    assert write is not None
    a.succeeded(write.record, "1", 0.0)
    assert not a.failed(9.9) and a.state is State.LEADER
    assert a.failed(10.0) and a.state is State.FOLLOWER
    assert not a.failed(11.0)  # reported once
    # b, which saw the record at 0.0 at the latest, may take over only at 15.0 > 10.0
    assert a.must_stop_by() == 10.0 < config("b").lease_duration


def test_release_clears_holder_and_bad_durations_refused() -> None:
    a = Elector(config("a"))
    assert a.release(WALL, {}) is None  # not leading: nothing to release
    a.observe(LeaseRecord("old", 15, None, None, 3), "7", 0.0)
    write = a.decide(100.0, WALL, {})
    assert write is not None and write.record.transitions == 4
    a.succeeded(write.record, "8", 100.0)
    released = a.release(WALL, {"w": "9"})
    assert released is not None and released.record.holder == ""
    assert released.record.lease_duration == 1 and released.record.transitions == 4
    with pytest.raises(ValueError):
        config("x", lease_duration=10, renew_deadline=10)


def test_lease_wire_format_round_trips() -> None:
    rec = LeaseRecord("a", 15, micro_time(WALL), micro_time(WALL), 2, {"k": "v"})
    from metacollector.kube.leader import Write

    body = lease_body(config("a"), Write(rec, "42"))
    assert body["apiVersion"] == "coordination.k8s.io/v1" and body["kind"] == "Lease"
    assert body["spec"] == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "leaseTransitions": 2,
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": "2026-01-01T00:00:00.000000Z",
    }
    assert parse_lease(body) == (rec, "42")


@dataclass
class LeaseAPI:
    """One Lease over httpx.MockTransport, with the API server's create/update semantics."""

    doc: dict[str, Any] | None = None
    rv: int = 0
    conflicts: int = 0
    down: set[str] = field(default_factory=set)  # identities whose requests fail

    def handler(self, who: str) -> Any:
        def handle(request: httpx.Request) -> httpx.Response:
            if who in self.down:
                raise httpx.ConnectError("partitioned", request=request)
            if request.method == "GET":
                return (
                    httpx.Response(404) if self.doc is None else httpx.Response(200, json=self.doc)
                )
            body = json.loads(request.content)
            if request.method == "POST":
                if self.doc is not None:
                    return httpx.Response(409, json={"reason": "AlreadyExists"})
            elif body["metadata"].get("resourceVersion") != str(self.rv):
                self.conflicts += 1
                return httpx.Response(409, json={"reason": "Conflict"})
            self.rv += 1
            body["metadata"]["resourceVersion"] = str(self.rv)
            self.doc = body
            return httpx.Response(201 if request.method == "POST" else 200, json=body)

        return handle

    @property
    def holder(self) -> str:
        return "" if self.doc is None else str(self.doc["spec"]["holderIdentity"])


@dataclass
class Candidate:
    name: str
    events: list[tuple[float, str]] = field(default_factory=list)
    took_over: list[LeaseRecord | None] = field(default_factory=list)

    def callbacks(self) -> Callbacks:
        def started(previous: LeaseRecord | None) -> None:
            self.events.append((trio.current_time(), "started"))
            self.took_over.append(previous)

        def stopped() -> None:
            self.events.append((trio.current_time(), "stopped"))

        return Callbacks(
            started=started,
            stopped=stopped,
            annotations=lambda: {"metacollector/watermark": self.name},
        )


async def wait_for(predicate: Any, timeout: float) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.1)


async def test_two_candidates_one_leader_partition_and_takeover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    api = LeaseAPI()
    a, b = Candidate("a"), Candidate("b")
    async with trio.open_nursery() as nursery:
        scopes = {}
        for cand in (a, b):
            client = httpx.AsyncClient(
                transport=httpx.MockTransport(api.handler(cand.name)), base_url="http://api"
            )
            scope = trio.CancelScope()
            scopes[cand.name] = scope

            async def run(
                c: Candidate = cand, cl: httpx.AsyncClient = client, s: trio.CancelScope = scope
            ) -> None:
                with s:
                    await run_election(cl, config(c.name), c.callbacks())

            nursery.start_soon(run)
            await trio.sleep(0.5)  # a starts first
        await wait_for(lambda: api.holder == "a" and a.events, 5)
        assert a.took_over == [None]  # created the Lease
        await trio.sleep(60)  # a minute of renewing: b never leads, a never stops
        assert [e for _, e in a.events] == ["started"] and b.events == []
        assert api.doc is not None and api.doc["spec"]["leaseTransitions"] == 0
        assert api.doc["metadata"]["annotations"] == {"metacollector/watermark": "a"}

        cut = trio.current_time()
        api.down.add("a")  # a is partitioned from the API server
        await wait_for(lambda: len(a.events) == 2 and b.events, 30)
        stopped_at, started_at = a.events[1][0], b.events[0][0]
        assert a.events[1][1] == "stopped"
        assert 8 <= stopped_at - cut <= 10  # renewDeadline after its last renew (2 s before)
        assert stopped_at < started_at  # never two leaders
        # a's last renew was in (cut - retryPeriod, cut]; b saw it change at most one jittered
        # follower period later, and takes over at its first attempt after leaseDuration from then
        longest_follower_period = RETRY_PERIOD * (1 + JITTER_FACTOR)
        took = started_at - cut
        assert LEASE_DURATION - RETRY_PERIOD <= took <= LEASE_DURATION + 2 * longest_follower_period
        previous = b.took_over[0]
        assert previous is not None and previous.holder == "a"
        assert previous.annotations == {"metacollector/watermark": "a"}  # a's watermark reaches b
        assert api.doc["spec"]["leaseTransitions"] == 1

        api.down.clear()  # a comes back: follows
        await trio.sleep(30)
        assert len(a.events) == 2 and api.holder == "b"

        scopes["b"].cancel()  # clean shutdown releases: a takes over within a retry period
        released = trio.current_time()
        await wait_for(lambda: len(a.events) == 3, 10)
        assert a.events[2][1] == "started" and a.events[2][0] - released <= 2 * 3.4
        assert api.doc["spec"]["leaseTransitions"] == 2
        nursery.cancel_scope.cancel()


def test_flags_controller_runtime_names_and_checks() -> None:
    from metacollector.app import election_config
    from metacollector.cli import build_parser, settings_from_args
    from metacollector.cloudevents import SinkConfigError
    from metacollector.settings import SettingsError

    def run(*argv: str):  # type: ignore[no-untyped-def]
        return settings_from_args(build_parser().parse_args(["run", *argv]))

    assert election_config(run()) is None  # off by default, as in controller-runtime
    s = run("--leader-elect", "--leader-election-namespace=falco", "--leader-election-id=ce")
    cfg = election_config(s)
    assert cfg is not None and (cfg.namespace, cfg.name) == ("falco", "ce")
    assert (cfg.lease_duration, cfg.renew_deadline, cfg.retry_period) == (15.0, 10.0, 2.0)
    assert cfg.identity != election_config(s).identity  # type: ignore[union-attr]
    with pytest.raises(SinkConfigError, match="--leader-election-namespace"):
        election_config(run("--leader-elect"))  # outside a cluster: no namespace file
    with pytest.raises(SettingsError, match="renew-deadline"):
        run("--leader-elect-renew-deadline=20")
    t = run("--cloudevents-token-file=/t", "--cloudevents-ca=/ca", "--cloudevents-replay")
    assert (t.cloudevents_token_file, t.cloudevents_ca, t.cloudevents_replay) == ("/t", "/ca", True)
