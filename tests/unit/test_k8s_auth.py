"""Client configuration and authentication over real HTTP(S) against the lab API server.

kubeconfig with a bearer token, an exec credential plugin, TLS with a CA and a client
certificate, in-cluster service-account config, and ``--master`` overriding the kubeconfig.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_router.k8s.client import ApiError, ConfigError, KubeClient
from kube_router_lab.apiserver import LabServer

TOKEN = "s3cret-token"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(d: Path, name: str, cn: str, ext: str) -> tuple[Path, Path]:
    key, csr, crt, extfile = (
        d / f"{name}.key",
        d / f"{name}.csr",
        d / f"{name}.crt",
        d / f"{name}.ext",
    )
    extfile.write_text(ext + "\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={cn}",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(d / "ca.crt"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "1",
        "-extfile",
        str(extfile),
    )
    return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
        "-days",
        "1",
        "-subj",
        "/CN=lab-ca",
    )
    scrt, skey = _issue(d, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1")
    ccrt, ckey = _issue(d, "client", "kube-router", "extendedKeyUsage=clientAuth")
    return Pki(d / "ca.crt", scrt, skey, ccrt, ckey)


def _server_tls(pki: Pki, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        ctx.load_verify_locations(pki.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _started(server: LabServer) -> LabServer:
    await server.start()
    server.store.create("namespaces", {"metadata": {"name": "kube-system"}})
    return server


@pytest.fixture
async def token_lab() -> AsyncIterator[LabServer]:
    server = await _started(LabServer("127.0.0.1", 0, token=TOKEN))
    yield server
    await server.stop()


def _kubeconfig(
    path: Path, server: str, user: dict[str, Any], cluster_extra: dict[str, Any] | None = None
) -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": server, **(cluster_extra or {})}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return str(path)


async def _namespaces(kubeconfig: str = "", master: str = "") -> bytes:
    client = await KubeClient.from_flags(kubeconfig, master)
    try:
        return await client.request("GET", "/api/v1/namespaces")
    finally:
        await client.close()


@pytest.mark.parametrize(("token", "ok"), [(TOKEN, True), ("wrong", False), (None, False)])
async def test_bearer_token(
    token_lab: LabServer, tmp_path: Path, token: str | None, ok: bool
) -> None:
    user = {"token": token} if token else {}
    path = _kubeconfig(tmp_path / "kc", token_lab.url, user)
    if ok:
        assert b"kube-system" in await _namespaces(path)
    else:
        with pytest.raises(ApiError) as err:
            await _namespaces(path)
        assert err.value.status == 401


async def test_exec_credential_plugin(token_lab: LabServer, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": TOKEN},
    }
    plugin.write_text(f"import json\nprint(json.dumps({credential!r}))\n")
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin)],
            "interactiveMode": "Never",
        }
    }
    path = _kubeconfig(tmp_path / "kc", token_lab.url, user)
    assert b"kube-system" in await _namespaces(path)


async def test_tls_with_ca_and_client_certificate(pki: Pki, tmp_path: Path) -> None:
    server = await _started(LabServer("127.0.0.1", 0, ssl_context=_server_tls(pki, True)))
    try:
        assert server.url.startswith("https://")
        user = {"client-certificate": str(pki.client_cert), "client-key": str(pki.client_key)}
        path = _kubeconfig(
            tmp_path / "kc", server.url, user, {"certificate-authority": str(pki.ca)}
        )
        assert b"kube-system" in await _namespaces(path)
        # Without the client certificate the handshake is refused.
        no_cert = _kubeconfig(
            tmp_path / "kc2", server.url, {}, {"certificate-authority": str(pki.ca)}
        )
        with pytest.raises(ApiError, match="ConnectionError"):
            await _namespaces(no_cert)
    finally:
        await server.stop()


async def test_tls_server_from_an_unknown_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    server = await _started(LabServer("127.0.0.1", 0, ssl_context=_server_tls(pki, False)))
    try:
        path = _kubeconfig(tmp_path / "kc", server.url, {})
        with pytest.raises(ApiError, match="ConnectionError"):
            await _namespaces(path)
    finally:
        await server.stop()


async def test_in_cluster_service_account(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes_asyncio.config import incluster_config

    server = await _started(
        LabServer("127.0.0.1", 0, token=TOKEN, ssl_context=_server_tls(pki, False))
    )
    try:
        (tmp_path / "token").write_text(TOKEN)
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(pki.ca))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
        assert b"kube-system" in await _namespaces()
    finally:
        await server.stop()


async def test_master_overrides_the_kubeconfig_server(token_lab: LabServer, tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "kc", "http://127.0.0.1:9", {"token": TOKEN})
    assert b"kube-system" in await _namespaces(path, master=token_lab.url)


async def test_no_config_anywhere_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="in-cluster"):
        await _namespaces()
    with pytest.raises(ConfigError, match="missing"):
        await _namespaces(str(tmp_path / "missing"))
