"""One frozen Settings object for `metacollector run`, built from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from metacollector.binding import NodeBinding
from metacollector.departures import DEFAULT_MAX_ENTRIES, DEFAULT_WINDOW


class SettingsError(ValueError):
    """A flag or environment value is invalid; the message names it."""


@dataclass(frozen=True)
class BindAddress:
    host: str  # "" = all interfaces
    port: int

    @classmethod
    def parse(cls, flag: str, value: str) -> BindAddress:
        """Parse upstream-style bind addresses: ":8080", "127.0.0.1:0", "[::1]:8081"."""
        host, sep, port = value.rpartition(":")
        if not sep:
            raise SettingsError(f"{flag}: {value!r} is not HOST:PORT (e.g. ':8080')")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            number = int(port)
        except ValueError:
            raise SettingsError(f"{flag}: port {port!r} in {value!r} is not a number") from None
        if not 0 <= number <= 65535:
            raise SettingsError(f"{flag}: port {number} in {value!r} is out of range")
        return cls(host, number)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    kubeconfig: str | None = None
    context: str | None = None
    metrics_bind: str = ":8080"  # "0" disables metrics
    health_bind: str = ":8081"
    broker_bind: BindAddress = BindAddress("", 45000)
    server_cert: str | None = None
    server_key: str | None = None
    client_ca: str | None = None
    node_binding: NodeBinding = NodeBinding.OFF
    tls_reload_interval: float = 5.0  # seconds between checks of the TLS files for changes
    cloudevents_sink: str | None = None
    cloudevents_source: str | None = None
    cloudevents_mode: Literal["binary", "structured"] = "binary"
    log_level: str = "info"
    log_format: Literal["json", "console"] = "json"
    stall_timeout: float = 30.0
    max_connections: int = 10000
    max_streams_per_connection: int = 1024
    max_subscribers_per_node: int = 256
    max_request_message_size: int = 64 * 1024
    streaming_list: bool = False
    # departure log (issue 15): how long and how many view departures are remembered
    departure_window: float = DEFAULT_WINDOW
    departure_max_entries: int = DEFAULT_MAX_ENTRIES
    # CloudEvents with replicas and an authenticated sink (issues 15 and 19)
    cloudevents_ca: str | None = None
    cloudevents_token_file: str | None = None
    cloudevents_replay: bool = False
    leader_elect: bool = False
    leader_election_namespace: str | None = None
    leader_election_id: str = "metacollector-cloudevents"
    leader_elect_lease_duration: float = 15.0
    leader_elect_renew_deadline: float = 10.0
    leader_elect_retry_period: float = 2.0
    # flags accepted for upstream compatibility that change nothing (flag, value): logged once
    unmapped_flags: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if (self.server_cert is None) != (self.server_key is None):
            raise SettingsError(
                "--broker-server-cert and --broker-server-key must be given together"
            )
        if self.client_ca and not self.server_cert:
            raise SettingsError("--broker-client-ca (mTLS) needs --broker-server-cert/key (TLS)")
        if self.node_binding is NodeBinding.CERTIFICATE and not self.client_ca:
            raise SettingsError(
                "--broker-node-binding(=certificate) needs client certificates"
                " (--broker-client-ca); without mTLS use --broker-node-binding=peer-address"
            )
        for flag, value in (
            ("--metrics-bind-address", self.metrics_bind),
            ("--health-probe-bind-address", self.health_bind),
        ):
            if value != "0":
                BindAddress.parse(flag, value)
        if self.stall_timeout <= 0:
            raise SettingsError("--stall-timeout must be positive")
        if self.departure_window <= 0:
            raise SettingsError("--departure-window must be positive")
        if self.departure_max_entries <= 0:
            raise SettingsError("--departure-max-entries must be positive")
        if not 1024 <= self.max_request_message_size <= 16 * 1024 * 1024:
            raise SettingsError("--max-request-message-size must be between 1 KiB and 16 MiB")
        if not (
            self.leader_elect_lease_duration
            > self.leader_elect_renew_deadline
            > 1.2 * self.leader_elect_retry_period
            > 0
        ):
            raise SettingsError(
                "--leader-elect-lease-duration > --leader-elect-renew-deadline > "
                "1.2 x --leader-elect-retry-period > 0 is required"
            )

    @property
    def sink_url(self) -> str | None:
        """--cloudevents-sink, else Knative's K_SINK (SinkBinding)."""
        return self.cloudevents_sink or os.environ.get("K_SINK") or None
