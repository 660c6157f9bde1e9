"""Where the API server is and how to authenticate to it: in-cluster service account or a kubeconfig.

The common cases are read here directly: the in-cluster service account (host and port from the
environment, the rotating bound token and CA from the mounted secret) and kubeconfigs whose user has a
token, a token file, a client certificate or basic credentials. Kubeconfigs that need more -- an ``exec``
credential plugin, an ``auth-provider``, or several files merged through ``$KUBECONFIG`` -- go through
the official client's loader. Loading the official client costs every process ~20 MB and ~0.5 s of
generated API models the driver never uses, which the plugin and exporter cannot afford on every node.
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

AuthHeaders = Callable[[], Awaitable[dict[str, str]]]


class KubeConfigError(Exception):
    """The API server connection cannot be configured; the message names the file or setting."""


async def _no_auth() -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Connection:
    server: str
    ssl: ssl.SSLContext | bool = True  # False: plain HTTP or verification off (insecure-skip-tls-verify)
    tls_server_name: str | None = None
    proxy: str | None = None
    auth: AuthHeaders = field(default=_no_auth, compare=False)
    namespace: str = "default"


class TokenFile:
    """A bearer token read from a file and re-read when the file changes (bound tokens rotate)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    async def __call__(self) -> dict[str, str]:
        st = self.path.stat()
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._stamp:
            self._token = self.path.read_text().strip()
            self._stamp = stamp
        return {"Authorization": f"Bearer {self._token}"}


def _static(headers: dict[str, str]) -> AuthHeaders:
    async def auth() -> dict[str, str]:
        return headers

    return auth


# -- in-cluster ------------------------------------------------------------------------------------


def in_cluster(sa_dir: Path = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] = os.environ) -> Connection:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError(
            "no kubeconfig given (--kubeconfig or $KUBECONFIG) and not running in a cluster "
            "(KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set)"
        )
    token = sa_dir / "token"
    if not token.is_file():
        raise KubeConfigError(f"in-cluster service account token {token} is missing")
    context = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
    namespace = (sa_dir / "namespace").read_text().strip() if (sa_dir / "namespace").is_file() else "default"
    shown = f"[{host}]" if ":" in host else host
    return Connection(f"https://{shown}:{port}", context, auth=TokenFile(token), namespace=namespace)


# -- kubeconfig ------------------------------------------------------------------------------------


def _named(entries: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for entry in entries or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(what)
            return body if isinstance(body, dict) else {}
    raise KubeConfigError(f"{path}: no {what} named {name!r}")


def _file_or_data(section: Mapping[str, Any], key: str, base: Path, scratch: list[Path]) -> str | None:
    """A certificate/key given as ``<key>`` (a path, relative to the kubeconfig) or ``<key>-data``."""
    data = section.get(f"{key}-data")
    if data:
        fd, name = tempfile.mkstemp(prefix="accel-dra-kube-", suffix=".pem")
        with os.fdopen(fd, "wb") as out:
            out.write(base64.b64decode(data))
        scratch.append(Path(name))
        return name
    value = section.get(key)
    if not value:
        return None
    return str((base / value) if not os.path.isabs(value) else Path(value))


def _tls(
    cluster: Mapping[str, Any], user: Mapping[str, Any], base: Path, server: str
) -> ssl.SSLContext | bool:
    if not server.startswith("https://"):
        return False
    scratch: list[Path] = []
    try:
        ca = _file_or_data(cluster, "certificate-authority", base, scratch)
        context = ssl.create_default_context(cafile=ca)
        if cluster.get("insecure-skip-tls-verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = _file_or_data(user, "client-certificate", base, scratch)
        key = _file_or_data(user, "client-key", base, scratch)
        if cert:
            context.load_cert_chain(cert, key)
        return context
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise KubeConfigError(f"{base}: TLS settings for {server}: {exc}") from exc
    finally:
        for path in scratch:
            with contextlib.suppress(OSError):
                path.unlink()


def _user_auth(user: Mapping[str, Any], base: Path) -> AuthHeaders:
    if user.get("token"):
        return _static({"Authorization": f"Bearer {user['token']}"})
    if user.get("tokenFile"):
        return TokenFile(base / user["tokenFile"])
    if user.get("username"):
        pair = f"{user['username']}:{user.get('password', '')}".encode()
        return _static({"Authorization": "Basic " + base64.b64encode(pair).decode()})
    return _no_auth


def needs_library(kubeconfig: str) -> bool:
    """Configs this module does not read itself: merged files, exec plugins, auth providers."""
    if os.pathsep in kubeconfig:
        return True
    import yaml  # only kubeconfig users pay for the YAML parser

    try:
        doc = yaml.safe_load(Path(kubeconfig).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False  # let from_kubeconfig report it
    users = doc.get("users") or []
    return any(
        isinstance(u, dict) and ("exec" in (u.get("user") or {}) or "auth-provider" in (u.get("user") or {}))
        for u in users
    )


def from_kubeconfig(kubeconfig: str, context: str | None = None) -> Connection:
    import yaml

    path = Path(kubeconfig).expanduser()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"kubeconfig {path} is not valid YAML: {exc}") from exc
    name = context or doc.get("current-context")
    if not name:
        raise KubeConfigError(f"{path}: no current-context and no --context given")
    ctx = _named(doc.get("contexts"), name, "context", path)
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster", path)
    user = _named(doc.get("users"), ctx["user"], "user", path) if ctx.get("user") else {}
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise KubeConfigError(f"{path}: cluster {ctx.get('cluster')!r} has no server")
    base = path.parent
    return Connection(
        server=server,
        ssl=_tls(cluster, user, base, server),
        tls_server_name=cluster.get("tls-server-name"),
        proxy=cluster.get("proxy-url"),
        auth=_user_auth(user, base),
        namespace=ctx.get("namespace") or "default",
    )


async def through_library(kubeconfig: str, context: str | None = None) -> Connection:
    """Let the official client load the config (exec plugins, auth providers, merged files)."""
    from kubernetes.aio import client as k8s_client
    from kubernetes.aio import config as k8s_config

    configuration = k8s_client.Configuration()
    try:
        await k8s_config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
        )
    except Exception as exc:  # the library raises its own ConfigException and plain errors
        raise KubeConfigError(f"kubeconfig {kubeconfig}: {exc}") from exc
    host = str(configuration.host).rstrip("/")
    context_ssl: ssl.SSLContext | bool = False
    if host.startswith("https://"):
        ctx = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            ctx.load_cert_chain(configuration.cert_file, configuration.key_file)
        if not configuration.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        context_ssl = ctx

    async def auth() -> dict[str, str]:
        settings: Mapping[str, Any] = dict(await configuration.auth_settings())  # refreshes expiring tokens
        token = (settings.get("BearerToken") or {}).get("value")
        return {"Authorization": token} if token else {}

    return Connection(
        server=host,
        ssl=context_ssl,
        tls_server_name=configuration.tls_server_name,
        proxy=configuration.proxy,
        auth=auth,
    )


async def load(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    """``kubeconfig`` (or ``$KUBECONFIG``) when given, otherwise the in-cluster service account."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if not path:
        return in_cluster()
    if needs_library(path):
        return await through_library(path, context)
    return from_kubeconfig(path, context)
