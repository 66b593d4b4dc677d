"""An httpx client for the API server from a KubeConfig: TLS, client certs, auth, timeouts."""

from __future__ import annotations

import os
import ssl
import tempfile

import httpx

from metacollector.kube.auth import KubeAuth
from metacollector.kube.config import KubeConfig, KubeConfigError


def ssl_context(cfg: KubeConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if cfg.ca_data:
        try:
            ctx.load_verify_locations(cadata=cfg.ca_data.decode())
        except (ssl.SSLError, ValueError) as exc:
            raise KubeConfigError(f"certificate-authority: not a valid PEM CA: {exc}") from None
    if cfg.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.client_cert is not None:
        cert, key = cfg.client_cert
        # ssl loads certificates from files only; keep them in a private temp dir briefly.
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
            for path, data in ((cert_path, cert), (key_path, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            try:
                ctx.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as exc:
                raise KubeConfigError(
                    f"client-certificate/client-key: not a valid PEM pair: {exc}"
                ) from None
    return ctx


def make_client(cfg: KubeConfig) -> httpx.AsyncClient:
    """Reads never time out (watches are bounded by their own cancel scopes)."""
    extensions = {}
    if cfg.tls_server_name:
        extensions["sni_hostname"] = cfg.tls_server_name

    async def add_sni(request: httpx.Request) -> None:
        request.extensions.update(extensions)

    return httpx.AsyncClient(
        base_url=cfg.server,
        verify=ssl_context(cfg) if cfg.server.startswith("https://") else False,
        auth=KubeAuth(cfg.auth),
        proxy=cfg.proxy_url,
        timeout=httpx.Timeout(connect=10.0, read=None, write=30.0, pool=None),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        event_hooks={"request": [add_sni]} if extensions else {},
        headers={"User-Agent": "metacollector"},
    )
