"""The reloader on its own: a Secret volume swap is seen, a broken update keeps the old value."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from metacollector import metrics
from metacollector.grpc.server import server_ssl_context
from metacollector.tlsreload import Reloaded
from tests.support.secret_volume import SecretVolume


def server_files(ca: trustme.CA) -> dict[str, bytes]:
    cert = ca.issue_cert("localhost")
    return {
        "tls.crt": cert.cert_chain_pems[0].bytes(),
        "tls.key": cert.private_key_pem.bytes(),
        "ca.crt": ca.cert_pem.bytes(),
    }


def served_issuer(ctx: ssl.SSLContext) -> str:
    """The issuer CN of the certificate a context serves (trustme names each CA uniquely)."""
    stats = ctx.get_ca_certs()  # the client CA bundle; the served chain has no public getter
    return str(stats[0]["subject"]) if stats else ""


def test_secret_volume_swap_reloads_and_a_broken_update_keeps_the_old(tmp_path: Path) -> None:
    first, second = trustme.CA(), trustme.CA()
    volume = SecretVolume(tmp_path / "tls", server_files(first))
    crt, key, ca = volume.path("tls.crt"), volume.path("tls.key"), volume.path("ca.crt")
    reloader = Reloaded("test", [crt, key, ca], lambda: server_ssl_context(crt, key, ca))
    original = reloader()
    failed = metrics.TLS_RELOADS.labels("test", "failed")
    assert not reloader.check()  # nothing changed

    volume.update(server_files(second))
    assert reloader.check() and reloader() is not original
    assert served_issuer(reloader()) == served_issuer(server_ssl_context(crt, key, ca))
    rotated = reloader()

    before = failed._value.get()
    volume.update({**server_files(second), "tls.key": b"-----BEGIN PRIVATE KEY-----\ngarbage\n"})
    assert not reloader.check() and reloader() is rotated  # kept
    assert not reloader.check()  # the same broken files are not retried
    assert failed._value.get() == before + 1
    assert reloader.failures == 1

    volume.update(server_files(first))  # fixed by the next update
    assert reloader.check() and reloader() is not rotated
    assert reloader.reloads == 2
