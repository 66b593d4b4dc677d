"""Command line: `metacollector run | demo | emulator | version`, flags compatible with upstream."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from metacollector import __version__
from metacollector.binding import NodeBinding
from metacollector.departures import DEFAULT_MAX_ENTRIES, DEFAULT_WINDOW, PLUGIN_MAX_BACKOFF
from metacollector.settings import BindAddress, Settings, SettingsError
from metacollector.zapflags import ZapFlags, add_zap_flags


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)"
    )
    p.add_argument("--context", help="kubeconfig context to use")
    p.add_argument(
        "--metrics-bind-address", default=":8080", help="/metrics address ('0' disables)"
    )
    p.add_argument(
        "--health-probe-bind-address", default=":8081", help="/healthz and /readyz address"
    )
    p.add_argument("--broker-bind-address", default=":45000", help="gRPC address")
    p.add_argument("--broker-server-cert", help="TLS certificate (PEM) for the gRPC port")
    p.add_argument("--broker-server-key", help="TLS private key (PEM) for the gRPC port")
    p.add_argument("--broker-client-ca", help="CA bundle: require client certificates (mTLS)")
    p.add_argument(
        "--broker-node-binding",
        nargs="?",
        const=NodeBinding.CERTIFICATE.value,
        default=NodeBinding.OFF.value,
        choices=[mode.value for mode in NodeBinding],
        help="certificate (the bare flag; needs mTLS): a client certificate may only watch the "
        "node named in its CN or DNS SAN; peer-address: a connection may only watch the node "
        "its source IP is a pod of (host-network pods: the node's IP)",
    )
    p.add_argument("--cloudevents-sink", help="CloudEvents sink URL (default: $K_SINK)")
    p.add_argument(
        "--cloudevents-source", help="CloudEvents source (default /metacollector/<cluster>)"
    )
    p.add_argument("--cloudevents-mode", choices=["binary", "structured"], default="binary")
    # default None: "not given", so the zap flags below can supply them
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    p.add_argument("--log-format", choices=["json", "console"], default=None)
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="end a subscriber that opens no flow-control window for this long (s)",
    )
    p.add_argument("--max-connections", type=int, default=10000)
    p.add_argument("--max-streams-per-connection", type=int, default=1024)
    p.add_argument("--max-subscribers-per-node", type=int, default=256)
    p.add_argument(
        "--max-request-message-size",
        type=int,
        default=64 * 1024,
        help="largest gRPC request message (a Selector) accepted, bytes",
    )
    p.add_argument(
        "--streaming-list",
        action="store_true",
        help="use streaming lists (sendInitialEvents) with fallback to list+watch",
    )
    p.add_argument(
        "--departure-window",
        type=float,
        default=DEFAULT_WINDOW,
        help="remember objects that left a node's view this long (s), to send them as Deletes "
        "to a reconnecting subscriber; keep above Falco's longest reconnect backoff "
        f"({PLUGIN_MAX_BACKOFF:.0f} s)",
    )
    p.add_argument(
        "--departure-max-entries",
        type=int,
        default=DEFAULT_MAX_ENTRIES,
        help="at most this many departures remembered in all (the oldest go first)",
    )
    # CloudEvents with replicas (leader election) and an authenticated sink
    p.add_argument("--cloudevents-ca", help="CA bundle (PEM) to verify an https:// sink")
    p.add_argument(
        "--cloudevents-token-file",
        help="bearer token file sent to the sink, re-read when it changes (e.g. a projected "
        "service account token for a Knative Broker's audience)",
    )
    p.add_argument(
        "--cloudevents-replay",
        action="store_true",
        help="on start and takeover send objects that already existed as <kind>.replayed.v1",
    )
    p.add_argument(
        "--leader-elect",
        action="store_true",
        help="elect one replica (a coordination.k8s.io Lease) to emit CloudEvents",
    )
    p.add_argument(
        "--leader-election-namespace",
        help="namespace of the Lease (default: the pod's own namespace)",
    )
    p.add_argument("--leader-election-id", default="metacollector-cloudevents", help="Lease name")
    p.add_argument("--leader-elect-lease-duration", type=float, default=15.0)
    p.add_argument("--leader-elect-renew-deadline", type=float, default=10.0)
    p.add_argument("--leader-elect-retry-period", type=float, default=2.0)
    add_zap_flags(p)


# The commands that run the API server emulator. Only they import it: ``run`` must not load the
# emulator or its extra dependencies (trustme, cryptography), which the production image lacks.
EMULATOR_COMMANDS = frozenset({"demo", "emulator"})
EMULATOR_EXTRA = "metacollector[emulator]"
EMULATOR_EXTRA_MODULES = frozenset({"trustme", "cryptography"})


def _command(argv: Sequence[str] | None) -> str | None:
    """The subcommand named on the command line (the first word not starting with '-')."""
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def build_parser(
    argv: Sequence[str] | None = None, prog: str = "metacollector"
) -> argparse.ArgumentParser:
    """The parser; the emulator's own flags are added only when ``argv`` names its command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Central Kubernetes metadata collector for Falco's k8smeta plugin.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_flags(sub.add_parser("run", help="run the collector against a cluster"))
    demo = sub.add_parser("demo", help="run the collector against the built-in API server emulator")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--pods-per-node", type=int, default=4)
    demo.add_argument("--churn-rate", type=float, default=1.0, help="cluster changes per second")
    demo.add_argument(
        "--node", default=None, help="node whose events to print (default: the first)"
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    emulator = sub.add_parser("emulator", help="run the Kubernetes API server emulator")
    if _command(argv) == "emulator":
        from metacollector.emulator.main import add_arguments

        add_arguments(emulator)
    sub.add_parser("version", help="print the version")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    zap = ZapFlags.from_args(args)
    return Settings(
        kubeconfig=args.kubeconfig,
        context=args.context,
        metrics_bind=args.metrics_bind_address,
        health_bind=args.health_probe_bind_address,
        broker_bind=BindAddress.parse("--broker-bind-address", args.broker_bind_address),
        server_cert=args.broker_server_cert,
        server_key=args.broker_server_key,
        client_ca=args.broker_client_ca,
        node_binding=NodeBinding(args.broker_node_binding),
        cloudevents_sink=args.cloudevents_sink,
        cloudevents_source=args.cloudevents_source,
        cloudevents_mode=args.cloudevents_mode,
        log_level=zap.log_level(args.log_level),
        log_format=zap.log_format(args.log_format),
        stall_timeout=args.stall_timeout,
        max_connections=args.max_connections,
        max_streams_per_connection=args.max_streams_per_connection,
        max_subscribers_per_node=args.max_subscribers_per_node,
        max_request_message_size=args.max_request_message_size,
        streaming_list=args.streaming_list,
        departure_window=args.departure_window,
        departure_max_entries=args.departure_max_entries,
        cloudevents_ca=args.cloudevents_ca,
        cloudevents_token_file=args.cloudevents_token_file,
        cloudevents_replay=args.cloudevents_replay,
        leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_id=args.leader_election_id,
        leader_elect_lease_duration=args.leader_elect_lease_duration,
        leader_elect_renew_deadline=args.leader_elect_renew_deadline,
        leader_elect_retry_period=args.leader_elect_retry_period,
        unmapped_flags=tuple(zap.unmapped().items()),
    )


def _missing_extra(exc: ModuleNotFoundError) -> int:
    """One line naming the extra to install; any other missing module is a real error."""
    if exc.name not in EMULATOR_EXTRA_MODULES:
        raise exc
    print(
        f"metacollector: error: the emulator needs the module {exc.name!r}: "
        f"pip install '{EMULATOR_EXTRA}'",
        file=sys.stderr,
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of both ``metacollector`` and ``meta-collector`` (upstream's binary name,
    which the image also provides as ``/meta-collector``)."""
    prog = os.path.basename(sys.argv[0]) if argv is None else "metacollector"
    if prog not in ("metacollector", "meta-collector"):
        prog = "metacollector"
    try:
        args = build_parser(argv, prog).parse_args(argv)
    except ModuleNotFoundError as exc:  # `emulator`'s flags import the emulator
        return _missing_extra(exc)
    if args.command == "version":
        print(f"metacollector {__version__}")
        return 0
    if args.command in EMULATOR_COMMANDS:
        try:
            if args.command == "emulator":
                from metacollector.emulator.main import main as command
            else:
                from metacollector.demo import run_demo as command
        except ModuleNotFoundError as exc:
            return _missing_extra(exc)
        return command(args)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"metacollector: error: {exc}", file=sys.stderr)
        return 1
    from metacollector.app import run_app

    return run_app(settings)


if __name__ == "__main__":
    sys.exit(main())
