"""One frozen Settings object for `metacollector run`, built from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal


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
    node_binding: bool = False
    cloudevents_sink: str | None = None
    cloudevents_source: str | None = None
    cloudevents_mode: Literal["binary", "structured"] = "binary"
    log_level: str = "info"
    log_format: Literal["json", "console"] = "json"
    stall_timeout: float = 30.0
    max_connections: int = 10000
    max_streams_per_connection: int = 1024
    max_subscribers_per_node: int = 256
    streaming_list: bool = False
    # flags accepted for upstream compatibility that change nothing (flag, value): logged once
    unmapped_flags: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if (self.server_cert is None) != (self.server_key is None):
            raise SettingsError(
                "--broker-server-cert and --broker-server-key must be given together"
            )
        if self.client_ca and not self.server_cert:
            raise SettingsError("--broker-client-ca (mTLS) needs --broker-server-cert/key (TLS)")
        if self.node_binding and not self.client_ca:
            raise SettingsError(
                "--broker-node-binding needs client certificates (--broker-client-ca)"
            )
        for flag, value in (
            ("--metrics-bind-address", self.metrics_bind),
            ("--health-probe-bind-address", self.health_bind),
        ):
            if value != "0":
                BindAddress.parse(flag, value)
        if self.stall_timeout <= 0:
            raise SettingsError("--stall-timeout must be positive")

    @property
    def sink_url(self) -> str | None:
        """--cloudevents-sink, else Knative's K_SINK (SinkBinding)."""
        return self.cloudevents_sink or os.environ.get("K_SINK") or None
