"""Kubeconfig and in-cluster variants; every bad input gets a message naming file and field."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import trustme

from metacollector.kube.auth import CredentialError, KubeAuth, run_exec_plugin
from metacollector.kube.client import make_client, ssl_context
from metacollector.kube.config import KubeConfigError, load_config, load_incluster, load_kubeconfig


def write(tmp: Path, text: str, name: str = "config") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def config(
    user: str = "    token: abc\n",
    cluster: str = "    server: https://k8s.example:6443\n",
    current: str = "c",
) -> str:
    return (
        f"apiVersion: v1\nkind: Config\ncurrent-context: {current}\n"
        f"clusters:\n- name: k\n  cluster:\n{cluster}"
        f"users:\n- name: u\n  user:\n{user}"
        "contexts:\n- name: c\n  context:\n    cluster: k\n    user: u\n"
        "- name: other\n  context:\n    cluster: k\n"
    )


def test_token_and_ca_data(tmp_path: Path) -> None:
    ca = trustme.CA()
    data = base64.b64encode(ca.cert_pem.bytes()).decode()
    cfg = load_kubeconfig(
        str(
            write(
                tmp_path,
                config(
                    cluster=f"    server: https://k8s:6443/\n    certificate-authority-data: {data}\n    tls-server-name: api.internal\n"
                ),
            )
        )
    )
    assert cfg.server == "https://k8s:6443" and cfg.auth.kind == "token" and cfg.auth.token == "abc"
    assert cfg.ca_data == ca.cert_pem.bytes() and cfg.tls_server_name == "api.internal"
    assert cfg.cluster_name == "k"
    ssl_context(cfg)  # loads


def test_files_relative_to_kubeconfig_and_client_cert(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("client")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "c.pem").write_bytes(cert.cert_chain_pems[0].bytes())
    (tmp_path / "k.pem").write_bytes(cert.private_key_pem.bytes())
    (tmp_path / "tok").write_text("from-file\n")
    path = write(
        tmp_path,
        config(
            user="    client-certificate: c.pem\n    client-key: k.pem\n    tokenFile: tok\n",
            cluster="    server: https://k8s:6443\n    certificate-authority: ca.pem\n",
        ),
    )
    cfg = load_kubeconfig(str(path))
    assert cfg.client_cert is not None and cfg.auth.kind == "token_file"
    ssl_context(cfg)
    key_data = base64.b64encode(cert.private_key_pem.bytes()).decode()
    cert_data = base64.b64encode(cert.cert_chain_pems[0].bytes()).decode()
    cfg2 = load_kubeconfig(
        str(
            write(
                tmp_path,
                config(
                    user=f"    client-certificate-data: {cert_data}\n    client-key-data: {key_data}\n"
                ),
                "c2",
            )
        )
    )
    assert cfg2.client_cert == cfg.client_cert


def test_insecure_context_and_proxy(tmp_path: Path) -> None:
    cfg = load_kubeconfig(
        str(
            write(
                tmp_path,
                config(
                    cluster="    server: https://k8s:6443\n    insecure-skip-tls-verify: true\n    proxy-url: http://proxy:3128\n"
                ),
            )
        ),
        "other",
    )
    assert cfg.insecure and cfg.proxy_url == "http://proxy:3128" and cfg.auth.kind == "none"
    assert make_client(cfg) is not None


def test_kubeconfig_env_merge_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = write(tmp_path, config(user="    token: first\n"), "a")
    b = write(tmp_path, config(user="    token: second\n", current="other"), "b")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "missing"), str(a), str(b)]))
    cfg = load_config(None, None)
    assert cfg.auth.token == "first"


def test_incluster_ipv6(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_bytes(trustme.CA().cert_pem.bytes())
    cfg = load_incluster("fd00::1", "443", tmp_path)
    assert cfg.server == "https://[fd00::1]:443" and cfg.auth.kind == "token_file"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clusters: [", "config: not valid YAML (line 1)"),
        ("- just a list", "config: expected dict, got list"),
        ("apiVersion: v1\nclusters: 5\n", "config: clusters: expected list, got int"),
        (config(current=""), "current-context: not set (use --context)"),
        (config(current="nope"), "contexts: no context named 'nope'"),
        (
            config(cluster="    server: ftp://x\n"),
            "clusters[k].cluster.server: must be an http(s) URL, got 'ftp://x'",
        ),
        (
            config(
                cluster="    server: https://x\n    certificate-authority: /nonexistent/ca.pem\n"
            ),
            "clusters[k].cluster.certificate-authority: file /nonexistent/ca.pem not found",
        ),
        (
            config(cluster="    server: https://x\n    certificate-authority-data: '%%%'\n"),
            "clusters[k].cluster.certificate-authority-data: not valid base64",
        ),
        (
            config(user="    auth-provider:\n      name: gcp\n"),
            "users[u].user.auth-provider: 'gcp' is not supported",
        ),
        (
            config(user="    username: a\n    password: b\n"),
            "users[u].user.username/password: basic auth is not supported",
        ),
        (config(user="    client-certificate-data: YQ==\n"), "users[u].user.client-key: missing"),
        (config(user="    exec:\n      args: [x]\n"), "users[u].user.exec.command: missing"),
        (
            config(
                user="    exec:\n      command: x\n      apiVersion: client.authentication.k8s.io/v1alpha1\n"
            ),
            "users[u].user.exec.apiVersion: 'client.authentication.k8s.io/v1alpha1' is not supported",
        ),
        (
            config(user="    tokenFile: /nonexistent/token\n"),
            "users[u].user.tokenFile: file /nonexistent/token not found",
        ),
        (config(current="[a]"), "current-context: expected a string"),
        (
            config(cluster="    server: https://x\n    insecure-skip-tls-verify: 'yes'\n"),
            "clusters[k].cluster.insecure-skip-tls-verify: expected true or false",
        ),
        (
            config(cluster="    server: https://x\n    proxy-url: socks5://p:1080\n"),
            "clusters[k].cluster.proxy-url: must be an http(s) URL (socks5 is not supported)",
        ),
        (
            config(cluster="    server: https://x\n    tls-server-name: 5\n"),
            "clusters[k].cluster.tls-server-name: expected str, got int",
        ),
        (config(user="    auth-provider: azure\n"), "users[u].user.auth-provider: 'azure'"),
        (config(user="    token: [a]\n"), "users[u].user.token: expected str, got list"),
    ],
)
def test_bad_kubeconfig_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(KubeConfigError) as info:
        load_kubeconfig(str(path))
    assert str(info.value).startswith(str(path)) and message in str(info.value), str(info.value)


def test_missing_file_and_incluster_without_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(KubeConfigError, match="kubeconfig file not found"):
        load_kubeconfig(str(tmp_path / "nope"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        load_incluster()


def plugin(tmp_path: Path, api: str, token: str, expiry: str | None = None, rc: int = 0) -> Path:
    status = {"token": token, **({"expirationTimestamp": expiry} if expiry else {})}
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, os, sys\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        f"assert info['apiVersion'] == {api!r}\n"
        f"print(json.dumps({{'apiVersion': {api!r}, 'kind': 'ExecCredential', 'status': {status!r}}}))\n"
        f"sys.exit({rc})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.parametrize(
    "api", ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"]
)
async def test_exec_plugin_versions_and_expiry(tmp_path: Path, api: str) -> None:
    script = plugin(tmp_path, api, "exec-token", "2000-01-01T00:00:00Z")
    path = write(
        tmp_path,
        config(
            user=f"    exec:\n      apiVersion: {api}\n      command: {sys.executable}\n      args: [{script}]\n"
        ),
    )
    cfg = load_kubeconfig(str(path))
    token, expires = await run_exec_plugin(cfg.auth)
    assert token == "exec-token" and expires < 1e9  # already expired: re-run on next request
    auth = KubeAuth(cfg.auth)
    await auth.refresh()
    assert auth._token == "exec-token"


async def test_exec_plugin_failure_is_clear(tmp_path: Path) -> None:
    script = plugin(tmp_path, "client.authentication.k8s.io/v1", "t", rc=3)
    cfg = load_kubeconfig(
        str(
            write(
                tmp_path,
                config(
                    user=f"    exec:\n      command: {sys.executable}\n      args: [{script}]\n"
                ),
            )
        )
    )
    with pytest.raises(CredentialError, match="exited 3"):
        await run_exec_plugin(cfg.auth)
    cfg = load_kubeconfig(
        str(write(tmp_path, config(user="    exec:\n      command: /nonexistent/plugin\n"), "c3"))
    )
    with pytest.raises(CredentialError, match="/nonexistent/plugin"):
        await run_exec_plugin(cfg.auth)


async def test_exec_plugin_against_emulator(tmp_path: Path) -> None:
    from metacollector.emulator.inprocess import running_emulator

    async with running_emulator(nodes=1, pods_per_node=1) as emu:
        script = plugin(tmp_path, "client.authentication.k8s.io/v1", emu.token)
        text = emu.kubeconfig.read_text().replace(
            f"    token: {emu.token}\n",
            f"    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {sys.executable}\n      args: [{script}]\n",
        )
        cfg = load_kubeconfig(str(write(tmp_path, text)))
        async with make_client(cfg) as client:
            r = await client.get("/api/v1/namespaces")
        assert r.status_code == 200, r.text
        assert json.loads(r.content)["kind"] == "NamespaceList"


async def test_exec_plugin_runs_once_for_concurrent_requests_and_again_on_401(
    tmp_path: Path,
) -> None:
    """Seven reflectors share one client: one plugin run serves them all; a 401 (the server
    stopped accepting the token) re-runs it once and the request succeeds."""
    import trio

    from metacollector.emulator.inprocess import running_emulator
    from tests.support.kube import counting_plugin, exec_kubeconfig

    async with running_emulator(nodes=1, pods_per_node=2) as emu:
        token_file = tmp_path / "token"
        token_file.write_text(emu.token)
        script, runs = counting_plugin(tmp_path, token_file)
        cfg = load_kubeconfig(str(exec_kubeconfig(emu, tmp_path, script)))
        codes: list[int] = []
        async with make_client(cfg) as client:

            async def get() -> None:
                codes.append((await client.get("/api/v1/pods")).status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(7):
                    nursery.start_soon(get)
            assert codes == [200] * 7
            assert len(runs.read_text().splitlines()) == 1
            token_file.write_text("next-token")
            await emu.admin("/admin/tokens", {"tokens": ["next-token"]})
            emu.token = "next-token"
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(get)
        assert codes == [200] * 10
        assert len(runs.read_text().splitlines()) == 2


async def test_tls_server_name_and_client_certificate_on_a_real_tls_server(tmp_path: Path) -> None:
    """The server's certificate names only api.internal and it requires a client certificate:
    connecting to 127.0.0.1 works with tls-server-name and the client cert from -data, and
    fails without tls-server-name (hostname mismatch)."""
    import ssl
    from functools import partial

    import httpx
    import trio

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.internal").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_cert = ca.issue_cert("collector")
    peers: list[object] = []

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
            peers.append(stream.getpeercert()["subjectAltName"])  # type: ignore[index]
            await stream.receive_some(65536)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            )
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            partial(trio.serve_ssl_over_tcp, handle, 0, server_ctx, host="127.0.0.1")
        )
        port = listener.transport_listener.socket.getsockname()[1]
        ca_data = base64.b64encode(ca.cert_pem.bytes()).decode()
        cert_data = base64.b64encode(client_cert.cert_chain_pems[0].bytes()).decode()
        key_data = base64.b64encode(client_cert.private_key_pem.bytes()).decode()
        user = f"    client-certificate-data: {cert_data}\n    client-key-data: {key_data}\n"
        cluster = (
            f"    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca_data}\n"
        )
        good = load_kubeconfig(
            str(write(tmp_path, config(user, cluster + "    tls-server-name: api.internal\n")))
        )
        async with make_client(good) as client:
            r = await client.get("/version")
        assert r.status_code == 200 and r.text == "ok"
        assert peers and "collector" in str(peers[0])
        bad = load_kubeconfig(str(write(tmp_path, config(user, cluster), "no-sni")))
        async with make_client(bad) as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get("/version")
        chain = []
        exc: BaseException | None = info.value
        while exc is not None:
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__
        assert any("not valid for '127.0.0.1'" in str(e) for e in chain), chain
        nursery.cancel_scope.cancel()
