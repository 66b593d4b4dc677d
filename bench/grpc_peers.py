"""Our h2 server against the gRPC servers a user could pick instead, on one Watch workload.

Each server runs in its own process and serves the same pre-rendered Event messages (the same
synthetic views, generated from one seed in every process): ours (metacollector.grpc.server),
grpcio's asyncio server and grpclib's server, each used as its documentation shows (a handler
that yields or sends one message at a time; ours sends the batches our Watch handler sends).
The subscribers are one independent client (metacollector.grpc.client on trio, one TCP
connection per subscriber, like Falco's plugin) in separate processes; every stream's content is
checked against the expected digest.

Phases, per server:
  fast  one subscriber receives --fast-messages messages (a view repeated): messages/s and the
        server's CPU-seconds per million messages;
  sync  --subscribers subscribers connect at once and each receives its node's view: wall time
        until the last one is complete, server CPU-seconds, server peak RSS.

    python bench/grpc_peers.py [--subscribers 5000 --fast-messages 300000 --rounds 3]

Prints a table (medians of --rounds alternating runs) and writes bench/results/grpc_peers.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

from _common import proc_stats

from metacollector.testing import free_port

HERE = pathlib.Path(__file__).parent
PY = sys.executable
SERVERS = ("ours", "grpcio", "grpclib")
PATH = "/metadata.Metadata/Watch"
FAST_NODE = "fast"
BATCH_BYTES = 16 * 1024  # what our Watch handler puts in one send


# --- the workload: deterministic views --------------------------------------------------------
def view(node: str, seed: int) -> list[bytes]:
    """~127 Events of realistic size for ``node`` (the full-size cluster's mean view)."""
    from metacollector.proto import metadata_pb2 as pb

    rng = random.Random(f"{seed}/{node}")
    out: list[bytes] = []

    def uid() -> str:
        a, b, c, d, e = (rng.getrandbits(n) for n in (32, 16, 16, 16, 48))
        return f"{a:08x}-{b:04x}-{c:04x}-{d:04x}-{e:012x}"

    namespaces = [(f"ns-{rng.randrange(50)}", uid()) for _ in range(7)]
    for name, u in namespaces:
        meta = json.dumps({"labels": {"kubernetes.io/metadata.name": name}, "name": name, "uid": u})
        out.append(
            pb.Event(reason="Create", uid=u, kind="Namespace", meta=meta).SerializeToString()
        )
    for i in range(30):
        ns, ns_uid = namespaces[i % len(namespaces)]
        app = f"app-{rng.randrange(10**6)}"
        dep, rs, svc, pod = uid(), uid(), uid(), uid()
        labels = {"app": app, "pod-template-hash": "7d9f5c", "team": f"t{i % 7}"}
        for kind, u, name in (("Deployment", dep, app), ("ReplicaSet", rs, f"{app}-7d9f5c")):
            meta = json.dumps(
                {"labels": labels, "name": name, "namespace": ns, "uid": u},
                separators=(",", ":"),
                sort_keys=True,
            )
            out.append(pb.Event(reason="Create", uid=u, kind=kind, meta=meta).SerializeToString())
        meta = json.dumps({"name": app, "namespace": ns, "uid": svc}, separators=(",", ":"))
        out.append(
            pb.Event(reason="Create", uid=svc, kind="Service", meta=meta).SerializeToString()
        )
        meta = json.dumps(
            {
                "generateName": f"{app}-7d9f5c-",
                "labels": labels,
                "name": f"{app}-7d9f5c-{rng.randrange(10**5):05d}",
                "namespace": ns,
                "uid": pod,
            },
            separators=(",", ":"),
            sort_keys=True,
        )
        event = pb.Event(reason="Create", uid=pod, kind="Pod", meta=meta)
        event.status = json.dumps({"podIP": f"10.{i}.{rng.randrange(256)}.{rng.randrange(256)}"})
        for kind, ref in (("Namespace", ns_uid), ("ReplicaSet", rs), ("Deployment", dep)):
            event.refs.resources[kind].list.append(ref)
        event.refs.resources["Service"].list.append(svc)
        out.append(event.SerializeToString(deterministic=True))  # map order fixed
    return out


def messages_for(node: str, seed: int, fast_messages: int) -> list[bytes]:
    if node != FAST_NODE:
        return view(node, seed)
    base = view("node-0", seed)
    return (base * (fast_messages // len(base) + 1))[:fast_messages]


def digest(messages: list[bytes]) -> str:
    h = hashlib.sha256()
    for m in messages:
        h.update(len(m).to_bytes(4, "big") + m)
    return h.hexdigest()


def batches(messages: list[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for m in messages:
        batch.append(m)
        size += len(m) + 5
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- servers -----------------------------------------------------------------------------------
def serve_ours(port: int, seed: int, fast: int) -> None:
    import trio

    from metacollector.grpc.server import GrpcServer, ServerLimits, ServerStream
    from metacollector.proto import metadata_pb2 as pb

    async def watch(request: bytes, stream: ServerStream) -> None:
        node = pb.Selector.FromString(request).nodeName
        for batch in batches(messages_for(node, seed, fast)):
            await stream.send_messages(batch)
        await trio.sleep_forever()

    async def main() -> None:
        server = GrpcServer({PATH: watch}, limits=ServerLimits(max_connections=100_000))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, "127.0.0.1", port)
            print("ready", flush=True)

    trio.run(main)


def serve_grpcio(port: int, seed: int, fast: int) -> None:
    import asyncio

    import grpc

    from metacollector.proto import metadata_pb2 as pb

    async def watch(request: pb.Selector, context: object) -> AsyncIterator[bytes]:
        for m in messages_for(request.nodeName, seed, fast):
            yield m
        await asyncio.Event().wait()

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1024)])
        handler = grpc.unary_stream_rpc_method_handler(
            watch, request_deserializer=pb.Selector.FromString, response_serializer=None
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("metadata.Metadata", {"Watch": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def serve_grpclib(port: int, seed: int, fast: int) -> None:
    import asyncio

    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server, Stream

    from metacollector.proto import metadata_pb2 as pb

    class PreRendered(CodecBase):
        """Proto codec that sends pre-rendered message bytes as they are."""

        __content_subtype__ = "proto"

        def encode(self, message: object, message_type: object) -> bytes:
            assert isinstance(message, bytes)
            return message

        def decode(self, data: bytes, message_type: type[pb.Selector]) -> pb.Selector:
            return message_type.FromString(data)

    class Metadata:
        async def watch(self, stream: Stream[pb.Selector, bytes]) -> None:
            request = await stream.recv_message()
            assert request is not None
            for m in messages_for(request.nodeName, seed, fast):
                await stream.send_message(m)
            await asyncio.Event().wait()

        def __mapping__(self) -> dict[str, Handler]:
            return {PATH: Handler(self.watch, Cardinality.UNARY_STREAM, pb.Selector, bytes)}

    async def main() -> None:
        server = Server([Metadata()], codec=PreRendered())
        await server.start("127.0.0.1", port, backlog=8192)
        print("ready", flush=True)
        await server.wait_closed()

    asyncio.run(main())


# --- subscribers --------------------------------------------------------------------------------
def subscribe(port: int, nodes: list[str], expected: dict[str, tuple[int, str]]) -> None:
    """Worker: watch ``nodes``; print {"done_s", "messages", "bad"} once all are complete."""
    import trio

    from metacollector.grpc.client import WatchEnded, open_watch

    async def one(node: str, done: list[float], bad: list[str]) -> None:
        count, want = expected[node]
        got: list[bytes] = []
        try:
            async with open_watch("127.0.0.1", port, node) as stream:
                async for batch in stream.messages():
                    got.extend(batch)
                    if len(got) >= count:
                        break
        except (WatchEnded, OSError) as exc:  # counted: the server's own failure, not ours
            failed.append(f"{node}: {exc}")
            return
        if digest(got) != want:
            bad.append(f"{node}: {len(got)} of {count}")
        done.append(time.monotonic())

    failed: list[str] = []

    async def main() -> None:
        done: list[float] = []
        bad: list[str] = []
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(one, node, done, bad)
        print(
            json.dumps(
                {
                    "first_s": min(done, default=started) - started,
                    "last_s": max(done, default=started) - started,
                    "failed": failed,
                    "messages": sum(expected[n][0] for n in nodes),
                    "bad": bad,
                }
            ),
            flush=True,
        )

    raise_nofile()
    trio.run(main)


# --- driver -------------------------------------------------------------------------------------
def proc(pid: int) -> tuple[float, float, float]:
    """(cpu_s, rss_mb, peak_rss_mb) of a process."""
    stats = proc_stats(pid)
    return stats["cpu_s"], stats["rss_mb"], stats["hwm_mb"]


def start_server(kind: str, port: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    cmd = [PY, __file__, "--serve", kind, "--port", str(port), "--seed", str(args.seed)]
    cmd += ["--fast-messages", str(args.fast_messages)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    if server.stdout.readline().strip() != "ready":
        raise SystemExit(f"{kind} server did not start")
    return server


def run_clients(port: int, nodes: list[str], procs: int, args: argparse.Namespace) -> dict:
    expected = {n: messages_for(n, args.seed, args.fast_messages) for n in nodes}
    exp = {n: (len(m), digest(m)) for n, m in expected.items()}
    workers = []
    for i in range(procs):
        part = nodes[i::procs]
        job = json.dumps({"port": port, "nodes": part, "expected": {n: exp[n] for n in part}})
        workers.append(
            subprocess.Popen(
                [PY, __file__, "--subscribe"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        assert workers[-1].stdin is not None
        workers[-1].stdin.write(job + "\n")
        workers[-1].stdin.close()
    results = []
    for w in workers:
        assert w.stdout is not None
        out = w.stdout.read()
        w.wait(timeout=args.timeout)
        results.append(json.loads(out.strip().splitlines()[-1]))
    bad = [n for r in results for n in r["bad"]]
    if bad:
        raise SystemExit(f"content mismatch on {len(bad)} streams, e.g. {bad[:3]}")
    failed = [f for r in results for f in r["failed"]]
    if failed:
        print(f"{len(failed)} streams ended by the server, e.g. {failed[:2]}", file=sys.stderr)
    return {
        "failed": len(failed),
        "last_s": max(r["last_s"] for r in results),
        "messages": sum(r["messages"] for r in results),
    }


def measure(kind: str, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    server = start_server(kind, port, args)
    try:
        cpu0, rss0, _ = proc(server.pid)
        t0 = time.monotonic()
        fast = run_clients(port, [FAST_NODE], 1, args)
        wall = time.monotonic() - t0
        cpu1, _, _ = proc(server.pid)
        nodes = [f"node-{i}" for i in range(args.subscribers)]
        t1 = time.monotonic()
        sync = run_clients(port, nodes, args.client_procs, args)
        sync_wall = time.monotonic() - t1
        cpu2, rss2, peak = proc(server.pid)
    finally:
        server.kill()
        server.wait()
    return {
        "fast_msgs_per_s": fast["messages"] / wall,
        "fast_cpu_s_per_million": (cpu1 - cpu0) / fast["messages"] * 1e6,
        "sync_wall_s": sync_wall,
        "sync_cpu_s": cpu2 - cpu1,
        "sync_messages": sync["messages"],
        "sync_streams_failed": sync["failed"],
        "rss_idle_mb": rss0,
        "rss_after_mb": rss2,
        "peak_rss_mb": peak,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--subscribers", type=int, default=5000)
    p.add_argument("--fast-messages", type=int, default=300_000)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--serve", choices=SERVERS)
    p.add_argument("--port", type=int)
    p.add_argument("--subscribe", action="store_true")
    args = p.parse_args()
    if args.serve:
        raise_nofile()
        {"ours": serve_ours, "grpcio": serve_grpcio, "grpclib": serve_grpclib}[args.serve](
            args.port, args.seed, args.fast_messages
        )
        return
    if args.subscribe:
        job = json.loads(sys.stdin.readline())
        subscribe(job["port"], job["nodes"], {k: tuple(v) for k, v in job["expected"].items()})
        return
    raise_nofile()
    kinds = args.servers.split(",")
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):  # alternate servers within each round (this VM drifts)
        for kind in kinds if r % 2 == 0 else reversed(kinds):
            runs[kind].append(measure(kind, args))
            print(
                f"round {r + 1} {kind}: {json.dumps(runs[kind][-1])}", file=sys.stderr, flush=True
            )
    med = {k: {f: statistics.median(run[f] for run in v) for f in v[0]} for k, v in runs.items()}
    print(
        f"\nWatch workload: one fast subscriber ({args.fast_messages:,} messages), then "
        f"{args.subscribers:,} subscribers syncing at once ({med[kinds[0]]['sync_messages']:,.0f} "
        f"messages); medians of {args.rounds} alternating rounds\n"
    )
    rows = [
        ("fast: messages/s", "fast_msgs_per_s", "{:,.0f}"),
        ("fast: server CPU-s per million messages", "fast_cpu_s_per_million", "{:.2f}"),
        ("sync: wall time (s)", "sync_wall_s", "{:.1f}"),
        ("sync: server CPU-s", "sync_cpu_s", "{:.1f}"),
        ("server RSS idle (MB)", "rss_idle_mb", "{:.0f}"),
        ("server peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("sync: streams the server ended before their view", "sync_streams_failed", "{:.0f}"),
    ]
    print("| | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for label, field, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(med[k][field]) for k in kinds) + " |")
    out = HERE / "results" / "grpc_peers.json"
    out.write_text(json.dumps({"args": vars(args), "runs": runs, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
