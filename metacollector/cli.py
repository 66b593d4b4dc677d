"""Command line: `metacollector run | demo | emulator | version`, flags compatible with upstream."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from metacollector import __version__
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
        action="store_true",
        help="with mTLS: a client certificate may only watch the node named in its CN or DNS SAN",
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
        "--streaming-list",
        action="store_true",
        help="use streaming lists (sendInitialEvents) with fallback to list+watch",
    )
    add_zap_flags(p)


def build_parser(prog: str = "metacollector") -> argparse.ArgumentParser:
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
        node_binding=args.broker_node_binding,
        cloudevents_sink=args.cloudevents_sink,
        cloudevents_source=args.cloudevents_source,
        cloudevents_mode=args.cloudevents_mode,
        log_level=zap.log_level(args.log_level),
        log_format=zap.log_format(args.log_format),
        stall_timeout=args.stall_timeout,
        max_connections=args.max_connections,
        max_streams_per_connection=args.max_streams_per_connection,
        max_subscribers_per_node=args.max_subscribers_per_node,
        streaming_list=args.streaming_list,
        unmapped_flags=tuple(zap.unmapped().items()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of both ``metacollector`` and ``meta-collector`` (upstream's binary name,
    which the image also provides as ``/meta-collector``)."""
    prog = os.path.basename(sys.argv[0]) if argv is None else "metacollector"
    if prog not in ("metacollector", "meta-collector"):
        prog = "metacollector"
    args = build_parser(prog).parse_args(argv)
    if args.command == "version":
        print(f"metacollector {__version__}")
        return 0
    if args.command == "emulator":
        from metacollector.emulator.main import main as emulator_main

        return emulator_main(args)
    if args.command == "demo":
        from metacollector.demo import run_demo

        return run_demo(args)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"metacollector: error: {exc}", file=sys.stderr)
        return 1
    from metacollector.app import run_app

    return run_app(settings)


if __name__ == "__main__":
    sys.exit(main())
