"""Kubeconfig and in-cluster configuration -> one KubeConfig (server, TLS, auth).

Every problem is a KubeConfigError whose message names the file and the field, e.g.
``/home/u/.kube/config: users[dev].user.client-certificate: file /x.pem not found``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(Exception):
    """A configuration problem, with the file and field it comes from."""


@dataclass(frozen=True)
class ExecSpec:
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"
    base_dir: str = "."


@dataclass(frozen=True)
class AuthSpec:
    kind: Literal["none", "token", "token_file", "exec"] = "none"
    token: str = ""
    token_file: str = ""
    exec: ExecSpec | None = None
    reread_interval: float = 60.0  # token files (service account tokens rotate)


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_data: bytes | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    proxy_url: str | None = None
    client_cert: tuple[bytes, bytes] | None = None  # PEM certificate, PEM key
    auth: AuthSpec = field(default_factory=AuthSpec)
    cluster_name: str = ""


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise KubeConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _opt_str(entry: Mapping[str, Any], key: str, where: str) -> str | None:
    """An optional string field; empty means absent."""
    value = entry.get(key)
    if value is None or value == "":
        return None
    return str(_expect(value, str, f"{where}.{key}"))


def _named(
    doc: Mapping[str, Any], section: str, where: str
) -> dict[str, tuple[dict[str, Any], str]]:
    """The entries of a kubeconfig list section by name, each with the path that names it."""
    entries = doc.get(section) or []
    _expect(entries, list, f"{where}: {section}")
    out: dict[str, tuple[dict[str, Any], str]] = {}
    for i, entry in enumerate(entries):
        _expect(entry, dict, f"{where}: {section}[{i}]")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise KubeConfigError(f"{where}: {section}[{i}].name: missing")
        out.setdefault(name, (entry, f"{where}: {section}[{name}]"))
    return out


def _read(path: str, base: Path, where: str) -> bytes:
    full = Path(path) if os.path.isabs(path) else base / path
    try:
        return full.read_bytes()
    except FileNotFoundError:
        raise KubeConfigError(f"{where}: file {full} not found") from None
    except OSError as exc:
        raise KubeConfigError(f"{where}: cannot read {full}: {exc.strerror}") from None


def _b64(value: Any, where: str) -> bytes:
    _expect(value, str, where)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KubeConfigError(f"{where}: not valid base64") from None


def _file_or_data(entry: Mapping[str, Any], name: str, base: Path, where: str) -> bytes | None:
    if entry.get(f"{name}-data"):
        return _b64(entry[f"{name}-data"], f"{where}.{name}-data")
    if entry.get(name):
        return _read(_expect(entry[name], str, f"{where}.{name}"), base, f"{where}.{name}")
    return None


def _load_files(paths: list[Path]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge kubeconfig files (first value wins). Returns the merged doc and the file each
    named entry came from (entries keep their own directory for relative paths)."""
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": []}
    origin: dict[str, str] = {}
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:
            if len(paths) > 1:
                continue  # KUBECONFIG may list files that do not exist, as kubectl allows
            raise KubeConfigError(f"{path}: kubeconfig file not found") from None
        except OSError as exc:
            raise KubeConfigError(f"{path}: cannot read kubeconfig: {exc.strerror}") from None
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark is not None else ""
            raise KubeConfigError(f"{path}: not valid YAML{at}") from None
        _expect(doc, dict, str(path))
        for section in ("clusters", "users", "contexts"):
            for name, (entry, _) in _named(doc, section, str(path)).items():
                key = f"{section}/{name}"
                if key not in origin:
                    origin[key] = str(path)
                    merged[section].append({**entry, "__dir": str(path.parent)})
        if not merged.get("current-context") and doc.get("current-context"):
            merged["current-context"] = doc["current-context"]
    return merged, origin


def load_kubeconfig(path: str | None = None, context: str | None = None) -> KubeConfig:
    """Load from ``path``, else $KUBECONFIG (os.pathsep-separated), else ~/.kube/config."""
    if path:
        paths = [Path(path)]
    elif os.environ.get("KUBECONFIG"):
        paths = [Path(p) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    else:
        paths = [Path.home() / ".kube" / "config"]
    doc, origin = _load_files(paths)
    first = str(paths[0])
    ctx_name = context or doc.get("current-context")
    if ctx_name is not None and not isinstance(ctx_name, str):
        raise KubeConfigError(f"{first}: current-context: expected a string")
    if not ctx_name:
        raise KubeConfigError(f"{first}: current-context: not set (use --context)")
    contexts = _named(doc, "contexts", first)
    if ctx_name not in contexts:
        raise KubeConfigError(f"{first}: contexts: no context named {ctx_name!r}")
    ctx_entry, _ = contexts[ctx_name]
    ctx_where = f"{origin[f'contexts/{ctx_name}']}: contexts[{ctx_name}]"
    ctx = _expect(ctx_entry.get("context"), dict, f"{ctx_where}.context")
    cluster_name = ctx.get("cluster")
    clusters = _named(doc, "clusters", first)
    if not isinstance(cluster_name, str) or cluster_name not in clusters:
        raise KubeConfigError(f"{ctx_where}.context.cluster: no cluster named {cluster_name!r}")
    cl_entry, _ = clusters[cluster_name]
    cl_where = f"{origin[f'clusters/{cluster_name}']}: clusters[{cluster_name}].cluster"
    cluster = _expect(cl_entry.get("cluster"), dict, cl_where)
    base = Path(cl_entry["__dir"])
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeConfigError(f"{cl_where}.server: must be an http(s) URL, got {server!r}")
    user: dict[str, Any] = {}
    user_where = ""
    user_base = base
    user_name = ctx.get("user")
    if user_name is not None and not isinstance(user_name, str):
        raise KubeConfigError(f"{ctx_where}.context.user: expected a string")
    if user_name:
        users = _named(doc, "users", first)
        if user_name not in users:
            raise KubeConfigError(f"{ctx_where}.context.user: no user named {user_name!r}")
        u_entry, _ = users[user_name]
        user_where = f"{origin[f'users/{user_name}']}: users[{user_name}].user"
        user = _expect(u_entry.get("user") or {}, dict, user_where)
        user_base = Path(u_entry["__dir"])
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise KubeConfigError(f"{cl_where}.insecure-skip-tls-verify: expected true or false")
    proxy_url = _opt_str(cluster, "proxy-url", cl_where)
    if proxy_url is not None and not proxy_url.startswith(("http://", "https://")):
        raise KubeConfigError(
            f"{cl_where}.proxy-url: must be an http(s) URL (socks5 is not supported), "
            f"got {proxy_url!r}"
        )
    return KubeConfig(
        server=server.rstrip("/"),
        ca_data=_file_or_data(cluster, "certificate-authority", base, cl_where),
        insecure=insecure,
        tls_server_name=_opt_str(cluster, "tls-server-name", cl_where),
        proxy_url=proxy_url,
        client_cert=_client_cert(user, user_base, user_where),
        auth=_auth(user, user_base, user_where),
        cluster_name=cluster_name,
    )


def _client_cert(user: Mapping[str, Any], base: Path, where: str) -> tuple[bytes, bytes] | None:
    cert = _file_or_data(user, "client-certificate", base, where)
    key = _file_or_data(user, "client-key", base, where)
    if (cert is None) != (key is None):
        missing = "client-key" if key is None else "client-certificate"
        raise KubeConfigError(f"{where}.{missing}: missing (client certificate needs both)")
    return (cert, key) if cert is not None and key is not None else None


def _auth(user: Mapping[str, Any], base: Path, where: str) -> AuthSpec:
    if user.get("auth-provider"):
        provider = user["auth-provider"]
        name = provider.get("name", "?") if isinstance(provider, dict) else provider
        raise KubeConfigError(
            f"{where}.auth-provider: {name!r} is not supported; use an exec credential plugin"
        )
    if user.get("username") or user.get("password"):
        raise KubeConfigError(f"{where}.username/password: basic auth is not supported")
    if user.get("exec"):
        spec = _expect(user["exec"], dict, f"{where}.exec")
        command = spec.get("command")
        if not isinstance(command, str) or not command:
            raise KubeConfigError(f"{where}.exec.command: missing")
        args = _expect(spec.get("args") or [], list, f"{where}.exec.args")
        env = _expect(spec.get("env") or [], list, f"{where}.exec.env")
        pairs = []
        for i, item in enumerate(env):
            if not isinstance(item, dict) or "name" not in item:
                raise KubeConfigError(f"{where}.exec.env[{i}]: needs name and value")
            pairs.append((str(item["name"]), str(item.get("value", ""))))
        api = spec.get("apiVersion") or "client.authentication.k8s.io/v1"
        if api not in ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"):
            raise KubeConfigError(f"{where}.exec.apiVersion: {api!r} is not supported")
        return AuthSpec(
            kind="exec",
            exec=ExecSpec(command, tuple(map(str, args)), tuple(pairs), api, str(base)),
        )
    if user.get("token"):
        return AuthSpec(kind="token", token=_expect(user["token"], str, f"{where}.token"))
    if user.get("tokenFile"):
        token_file = _expect(user["tokenFile"], str, f"{where}.tokenFile")
        full = token_file if os.path.isabs(token_file) else str(base / token_file)
        _read(full, base, f"{where}.tokenFile")
        return AuthSpec(kind="token_file", token_file=full)
    return AuthSpec()


def load_incluster(
    host: str | None = None, port: str | None = None, account_dir: Path = SERVICE_ACCOUNT_DIR
) -> KubeConfig:
    """The pod's service account: token (re-read every minute and on 401), CA, service env."""
    host = host or os.environ.get("KUBERNETES_SERVICE_HOST")
    port = port or os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError(
            "in-cluster: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT not set "
            "(not running in a pod? use --kubeconfig)"
        )
    if ":" in host:
        host = f"[{host}]"
    token = account_dir / "token"
    _read(str(token), account_dir, "in-cluster: service account token")
    ca = _read(str(account_dir / "ca.crt"), account_dir, "in-cluster: service account CA")
    return KubeConfig(
        server=f"https://{host}:{port}",
        ca_data=ca,
        auth=AuthSpec(kind="token_file", token_file=str(token)),
        cluster_name="",
    )


def load_config(kubeconfig: str | None, context: str | None) -> KubeConfig:
    """--kubeconfig > $KUBECONFIG > in-cluster (in a pod) > ~/.kube/config."""
    if kubeconfig or os.environ.get("KUBECONFIG"):
        return load_kubeconfig(kubeconfig, context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return load_incluster()
    return load_kubeconfig(None, context)
