"""How the driver reaches the API server: kubeconfig flavours, in-cluster config, TLS with client certs,
rotating tokens, and the official loader for exec credential plugins."""

from __future__ import annotations

import base64
import json
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from driver.kube.client import ApiError, KubeClient
from driver.kube.connection import KubeConfigError, from_kubeconfig, in_cluster, needs_library
from driver.sim.apiserver import SimApiServer


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt"))  # fmt: skip
    for name, cn, ext in (
        ("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1"),
        ("client", "accel-dra", ""),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        extfile = d / f"{name}.ext"
        extfile.write_text(ext + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", str(extfile), "-out", str(d / f"{name}.crt"))  # fmt: skip
    return Pki(
        d / "ca.crt",
        d / "server.crt",
        d / "server.key",
        d / "client.crt",
        d / "client.key",
        d / "other-ca.crt",
    )


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[str]:
    """An HTTPS endpoint that requires a client certificate and echoes who called and how."""

    async def version(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in (peer or {}).get("subject", ()))
        return web.json_response(
            {
                "gitVersion": "v1.35.0",
                "client": subject.get("commonName"),
                "auth": request.headers.get("Authorization"),
            }
        )

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.verify_mode = ssl.CERT_OPTIONAL  # the tests check the presented certificate themselves
    app = web.Application()
    app.router.add_get("/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"https://127.0.0.1:{port}"
    await runner.cleanup()


def kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any], namespace: str = "gpu") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [
                    {"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": namespace}}
                ],
                "current-context": "ctx",
            }
        )
    )
    return path


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


async def version_through(config: Path) -> dict[str, Any]:
    async with await KubeClient.connect(str(config)) as kube:
        return await kube.server_version()


async def test_client_certificate_and_ca_from_files(tmp_path: Path, pki: Pki, tls_server: str) -> None:
    # Relative paths are relative to the kubeconfig's directory.
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_bytes((pki.ca.parent / name).read_bytes())
    config = kubeconfig(
        tmp_path / "config",
        {"server": tls_server, "certificate-authority": "ca.crt"},
        {"client-certificate": "client.crt", "client-key": "client.key"},
    )
    answer = await version_through(config)
    assert answer["client"] == "accel-dra" and answer["auth"] is None


async def test_certificate_data_and_token(tmp_path: Path, pki: Pki, tls_server: str) -> None:
    config = kubeconfig(
        tmp_path / "config",
        {"server": tls_server, "certificate-authority-data": b64(pki.ca)},
        {
            "client-certificate-data": b64(pki.client_cert),
            "client-key-data": b64(pki.client_key),
            "token": "t0k3n",
        },
    )
    answer = await version_through(config)
    assert answer == {"gitVersion": "v1.35.0", "client": "accel-dra", "auth": "Bearer t0k3n"}
    leftovers = [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("accel-dra-kube-*.pem")]
    assert leftovers == [], "decoded key material must not stay on disk"


async def test_wrong_ca_is_refused_and_insecure_skip_verify_is_honoured(
    tmp_path: Path, pki: Pki, tls_server: str
) -> None:
    wrong = kubeconfig(
        tmp_path / "wrong", {"server": tls_server, "certificate-authority": str(pki.other_ca)}, {}
    )
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await version_through(wrong)
    insecure = kubeconfig(tmp_path / "insecure", {"server": tls_server, "insecure-skip-tls-verify": True}, {})
    assert (await version_through(insecure))["gitVersion"] == "v1.35.0"


async def test_token_file_is_re_read_when_it_rotates(tmp_path: Path, pki: Pki, tls_server: str) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    config = kubeconfig(
        tmp_path / "config",
        {"server": tls_server, "certificate-authority": str(pki.ca)},
        {"tokenFile": "token"},
    )
    async with await KubeClient.connect(str(config)) as kube:
        assert (await kube.server_version())["auth"] == "Bearer first"
        replacement = tmp_path / "token.new"
        replacement.write_text("second\n")
        replacement.replace(token)  # how the kubelet rotates projected tokens: a new file
        assert (await kube.server_version())["auth"] == "Bearer second"


async def test_in_cluster_service_account(
    tmp_path: Path, pki: Pki, tls_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "ca.crt").write_bytes(pki.ca.read_bytes())
    (sa / "namespace").write_text("accel-dra")
    port = tls_server.rsplit(":", 1)[1]
    connection = in_cluster(sa, {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port})
    assert connection.namespace == "accel-dra"
    async with KubeClient(connection) as kube:
        assert (await kube.server_version())["auth"] == "Bearer sa-token"


def test_in_cluster_outside_a_cluster_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="not running in a cluster"):
        in_cluster(tmp_path, {})


async def test_exec_credential_plugins_go_through_the_official_loader(tmp_path: Path) -> None:
    plugin = tmp_path / "credential-plugin"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "from-exec"},
    }
    plugin.write_text(f"#!{sys.executable}\nimport json\nprint(json.dumps({credential!r}))\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    async with SimApiServer(token="from-exec") as server:
        exec_user = {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": str(plugin),
                "interactiveMode": "Never",
            }
        }
        config = kubeconfig(tmp_path / "config", {"server": server.url}, exec_user)
        assert needs_library(str(config))
        assert (await version_through(config))["gitVersion"].startswith("v1.")
        # The same server refuses a client without the token: the exec plugin's token really was used.
        anonymous = kubeconfig(tmp_path / "anonymous", {"server": server.url}, {})
        async with await KubeClient.connect(str(anonymous)) as kube:
            with pytest.raises(ApiError) as refused:
                await kube.request("GET", "/api/v1/nodes")
            assert refused.value.status == 401


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{{{", "not valid YAML"),
        (json.dumps({"contexts": []}), "no current-context"),
        (json.dumps({"current-context": "x", "contexts": []}), "no context named 'x'"),
        (
            json.dumps(
                {
                    "current-context": "x",
                    "contexts": [{"name": "x", "context": {"cluster": "c"}}],
                    "clusters": [{"name": "c", "cluster": {}}],
                }
            ),
            "has no server",
        ),
    ],
)
def test_broken_kubeconfigs_name_the_problem(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "config"
    path.write_text(document)
    with pytest.raises(KubeConfigError, match=message):
        from_kubeconfig(str(path))


def test_missing_kubeconfig_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"cannot read kubeconfig .*nope"):
        from_kubeconfig(str(tmp_path / "nope"))


def test_static_kubeconfigs_do_not_load_the_official_client(tmp_path: Path) -> None:
    """Regression guard for the plugin's and exporter's memory budget (docs/performance.md): the official
    client loads ~20 MB of generated models; only exec/auth-provider configs need it."""
    config = kubeconfig(tmp_path / "config", {"server": "http://127.0.0.1:9"}, {"token": "t"})
    code = (
        "import asyncio, sys\n"
        "from driver.kube.client import KubeClient\n"
        f"asyncio.run(KubeClient.connect({str(config)!r}))\n"
        "print(any(m.split('.')[0] == 'kubernetes' for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
