"""TLS, authentication and authorization against a real `magnetar standalone`, with the
official Python client (its C++ core) and plain HTTPS requests.

The broker is configured the way the Pulsar Python client's own test suite configures its
standalone: a `standalone.conf` in Pulsar's format with TLS on extra ports from a CA-signed
certificate, the TLS, token and basic providers, authorization on, `anonymousUserRole` and
`superUserRoles`. Keys, certificates and tokens are made in the test: the CA and certificates
with openssl, the secret key and tokens with `magnetar tokens`, the htpasswd line with
`openssl passwd -apr1` (what Apache's htpasswd writes).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pulsar
import pytest

from conftest import _track
from magnetar_process import MagnetarProcess, free_ports, magnetar_bin

SUPER = "superUser"


def run(*args: str | Path, input: bytes | None = None) -> bytes:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, input=input).stdout


class Pki:
    """A CA, the broker's certificate (localhost, 127.0.0.1) and client certificates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_key, self.ca = root / "ca.key.pem", root / "ca.cert.pem"
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=magnetar-test-ca", "-keyout", self.ca_key, "-out", self.ca)  # fmt: skip
        self.broker_key, self.broker_cert = self.issue("broker", "localhost", server=True)

    def issue(self, name: str, common_name: str, server: bool = False, ca: tuple[Path, Path] | None = None,
              organization: str = "magnetar", version1: bool = False) -> tuple[Path, Path]:  # fmt: skip
        """A key and certificate; `version1`: an X.509 v1 certificate (no extensions), as the
        Pulsar client's own test CA issues its client certificate."""
        ca_key, ca_cert = ca or (self.ca_key, self.ca)
        key, csr, cert = self.root / f"{name}.key.pem", self.root / f"{name}.csr", self.root / f"{name}.cert.pem"
        ext = self.root / f"{name}.ext"
        ext.write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
            if server
            else "extendedKeyUsage=clientAuth\n"
        )
        # PKCS#8 keys, as Pulsar's docs make them.
        run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
        run("openssl", "req", "-new", "-key", key, "-subj", f"/O={organization}/CN={common_name}", "-out", csr)
        extensions = [] if version1 else ["-extfile", ext]
        run("openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", *extensions, "-out", cert)  # fmt: skip
        return key, cert


def token(subject: str, secret: Path, expiry: str | None = None) -> str:
    args = [magnetar_bin(), "tokens", "create", "--subject", subject, "--secret-key", f"file://{secret}"]
    if expiry:
        args += ["--expiry-time", expiry]
    return run(*args).decode().strip()


class SecureNode:
    def __init__(self, node: MagnetarProcess, pki: Pki, secret: Path, tls_port: int, https_port: int) -> None:
        self.node, self.pki, self.secret = node, pki, secret
        self.tls_url = f"pulsar+ssl://localhost:{tls_port}"
        self.https_url = f"https://localhost:{https_port}"
        self.https_port = https_port
        self.super_token = token(SUPER, secret)

    def http(self, method: str, path: str, body: Any = None, auth: str | None = None,
             tls: bool = True) -> tuple[int, Any]:  # fmt: skip
        base = self.https_url if tls else self.node.http_url
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", auth)
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        try:
            with urllib.request.urlopen(request, timeout=15, context=context if tls else None) as response:
                text = response.read().decode()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            text = error.read().decode()
            return error.code, json.loads(text) if text else None

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.http(method, path, body, auth=f"Bearer {self.super_token}")
        assert status in (200, 204), f"{method} {path}: {status} {answer}"
        return answer

    def client(self, authentication: pulsar.Authentication | None = None, tls: bool = True,
               timeout: int = 10) -> pulsar.Client:  # fmt: skip
        return pulsar.Client(
            self.tls_url if tls else self.node.service_url,
            authentication=authentication,
            tls_trust_certs_file_path=str(self.pki.ca) if tls else None,
            tls_validate_hostname=tls,
            operation_timeout_seconds=timeout,
            connection_timeout_ms=5000,
            logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error),
        )


@pytest.fixture(scope="module")
def _secure() -> Iterator[SecureNode]:
    with tempfile.TemporaryDirectory(prefix="magnetar-security-") as workdir:
        root = Path(workdir)
        pki = Pki(root)
        secret = root / "secret.key"
        run(magnetar_bin(), "tokens", "create-secret-key", "--output", secret)
        apr1 = run("openssl", "passwd", "-apr1", "basic-password").decode().strip()
        (root / "htpasswd").write_text(f"basicuser:{apr1}\n")
        tls_port, https_port = free_ports(2)
        conf = root / "standalone.conf"
        providers = ",".join(
            f"org.apache.pulsar.broker.authentication.AuthenticationProvider{p}" for p in ("Tls", "Token", "Basic")
        )
        conf.write_text(
            "\n".join([
                "# Pulsar's standalone.conf format, as the Python client's test setup writes it",
                f"brokerServicePortTls={tls_port}",
                f"webServicePortTls={https_port}",
                f"tlsCertificateFilePath={pki.broker_cert}",
                f"tlsKeyFilePath={pki.broker_key}",
                f"tlsTrustCertsFilePath={pki.ca}",
                "tlsAllowInsecureConnection=false",
                "tlsCertRefreshCheckDurationSec=1",
                "authenticationEnabled=true",
                f"authenticationProviders={providers}",
                f"tokenSecretKey=file://{secret}",
                f"basicAuthConf={root / 'htpasswd'}",
                "authorizationEnabled=true",
                "superUserRoles=localhost,superUser,admin",
                "anonymousUserRole=anonymous",
                "authenticationRefreshCheckSeconds=1",
                "zookeeperServers=",
                "",
            ])
        )  # fmt: skip
        node = MagnetarProcess(magnetar_bin(), root, "secure", extra_args=["--config", str(conf)])
        try:
            node.start()
            secure = SecureNode(node, pki, secret, tls_port, https_port)
            official_setup(secure)
            yield secure
        finally:
            node.stop()


@pytest.fixture
def secure(request: pytest.FixtureRequest, _secure: SecureNode) -> SecureNode:
    _track(request, _secure.node)
    return _secure


# What the C++ client raises when the broker refuses its CONNECT: it closes the connection
# and retries the lookup until its operation timeout (the broker's log names the reason).
REFUSED = (pulsar.AuthenticationError, pulsar.ConnectError, pulsar.Timeout)


def roundtrip(client: pulsar.Client, topic: str, count: int = 3) -> None:
    consumer = client.subscribe(topic, f"sub-{uuid.uuid4().hex[:6]}")
    producer = client.create_producer(topic)
    sent = [f"m{i}".encode() for i in range(count)]
    for body in sent:
        producer.send(body)
    received = []
    for _ in sent:
        message = consumer.receive(timeout_millis=10_000)
        received.append(message.data())
        consumer.acknowledge(message)
    assert received == sent
    producer.close()
    consumer.close()


def official_setup(secure: SecureNode) -> None:
    """What the Pulsar Python client's test setup does with curl once the broker is up: the
    cluster, tenants public and private, public/default-2 open to `anonymous` and private/auth
    to `token-principal`. With authentication on, the broker leaves `public` to this."""
    status, _ = secure.http("PUT", "/admin/v2/clusters/standalone", {"serviceUrl": secure.node.http_url},
                            auth=f"Bearer {secure.super_token}")  # fmt: skip
    assert status in (204, 409)
    for tenant in ("public", "private"):
        secure.admin("PUT", f"/admin/v2/tenants/{tenant}", {"adminRoles": [], "allowedClusters": ["standalone"]})
    secure.admin("PUT", "/admin/v2/namespaces/public/default-2",
                 {"auth_policies": {"namespace_auth": {"anonymous": ["produce", "consume"]}}})  # fmt: skip
    secure.admin("PUT", "/admin/v2/namespaces/private/auth",
                 {"auth_policies": {"namespace_auth": {"token-principal": ["produce", "consume"]}}})  # fmt: skip


def test_the_official_client_test_setup_works(secure: SecureNode) -> None:
    """Anonymous clients in public/default-2 and token-principal in private/auth, over TLS."""
    anonymous = secure.client()
    try:
        roundtrip(anonymous, f"persistent://public/default-2/t-{uuid.uuid4().hex[:6]}")
        with pytest.raises(pulsar.AuthorizationError):
            anonymous.create_producer(f"persistent://private/auth/t-{uuid.uuid4().hex[:6]}")
    finally:
        anonymous.close()
    principal = secure.client(pulsar.AuthenticationToken(token("token-principal", secure.secret)))
    try:
        roundtrip(principal, f"persistent://private/auth/t-{uuid.uuid4().hex[:6]}")
    finally:
        principal.close()


def test_tokens_good_bad_expired_and_malformed(secure: SecureNode) -> None:
    namespace = f"public/tok-{uuid.uuid4().hex[:6]}"
    secure.admin("PUT", f"/admin/v2/namespaces/{namespace}",
                 {"auth_policies": {"namespace_auth": {"token-principal": ["produce", "consume"]}}})  # fmt: skip
    topic = f"persistent://{namespace}/t"
    good = secure.client(pulsar.AuthenticationToken(token("token-principal", secure.secret)))
    try:
        roundtrip(good, topic, 1)
    finally:
        good.close()
    other_key = Path(secure.node.workdir) / "other.key"
    run(magnetar_bin(), "tokens", "create-secret-key", "--output", other_key)
    expired = token("token-principal", secure.secret, "1s")
    time.sleep(2)
    for bad in (token("token-principal", other_key), expired, "not-a-token", "a.b.c", "x" * 20_000):
        client = secure.client(pulsar.AuthenticationToken(bad), timeout=2)
        try:
            with pytest.raises(REFUSED):
                client.create_producer(topic)
        finally:
            client.close()
    assert secure.node.process is not None and secure.node.process.poll() is None, "the broker survived"
    log = "\n".join(path.read_text(errors="replace") for path in secure.node.logs)
    for reason in ("InvalidSignature", "ExpiredSignature", "CONNECT refused"):
        assert reason in log, f"the broker's log names {reason}"


def test_tls_client_certificates_give_their_common_name(secure: SecureNode) -> None:
    namespace = f"public/cert-{uuid.uuid4().hex[:6]}"
    secure.admin("PUT", f"/admin/v2/namespaces/{namespace}",
                 {"auth_policies": {"namespace_auth": {"cert-role": ["produce", "consume"]}}})  # fmt: skip
    key, cert = secure.pki.issue("cert-role", "cert-role")
    client = secure.client(pulsar.AuthenticationTLS(str(cert), str(key)))
    try:
        roundtrip(client, f"persistent://{namespace}/t")
    finally:
        client.close()
    # An X.509 version 1 certificate (Pulsar's own test certificates are), signed by the CA.
    key, cert = secure.pki.issue("cert-role-v1", "cert-role", version1=True)
    assert b"Version: 1 (0x0)" in run("openssl", "x509", "-in", cert, "-noout", "-text")
    client = secure.client(pulsar.AuthenticationTLS(str(cert), str(key)))
    try:
        roundtrip(client, f"persistent://{namespace}/t-v1")
    finally:
        client.close()
    # A certificate of another role: connected, but without permission there.
    key, cert = secure.pki.issue("other-role", "other-role")
    client = secure.client(pulsar.AuthenticationTLS(str(cert), str(key)))
    try:
        with pytest.raises(pulsar.AuthorizationError):
            client.create_producer(f"persistent://{namespace}/t")
    finally:
        client.close()
    # A certificate from a CA the broker does not trust: the handshake fails.
    rogue = (secure.pki.root / "rogue-ca.key.pem", secure.pki.root / "rogue-ca.cert.pem")
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rogue",
        "-keyout", rogue[0], "-out", rogue[1])  # fmt: skip
    for version1 in (False, True):
        key, cert = secure.pki.issue(f"rogue-client-{version1}", "cert-role", ca=rogue, version1=version1)
        client = secure.client(pulsar.AuthenticationTLS(str(cert), str(key)), timeout=2)
        try:
            with pytest.raises(REFUSED):
                client.create_producer(f"persistent://{namespace}/t")
        finally:
            client.close()


def test_basic_auth_from_an_htpasswd_file(secure: SecureNode) -> None:
    namespace = f"public/basic-{uuid.uuid4().hex[:6]}"
    secure.admin("PUT", f"/admin/v2/namespaces/{namespace}",
                 {"auth_policies": {"namespace_auth": {"basicuser": ["produce", "consume"]}}})  # fmt: skip
    client = secure.client(pulsar.AuthenticationBasic("basicuser", "basic-password"))
    try:
        roundtrip(client, f"persistent://{namespace}/t")
    finally:
        client.close()
    for user, password in (("basicuser", "wrong"), ("nobody", "basic-password")):
        client = secure.client(pulsar.AuthenticationBasic(user, password), timeout=2)
        try:
            with pytest.raises(REFUSED):
                client.create_producer(f"persistent://{namespace}/t")
        finally:
            client.close()
    basic = base64.b64encode(b"basicuser:basic-password").decode()
    assert secure.http("GET", "/admin/v2/clusters", auth=f"Basic {basic}")[0] == 200
    bad = base64.b64encode(b"basicuser:nope").decode()
    assert secure.http("GET", "/admin/v2/clusters", auth=f"Basic {bad}")[0] == 401


def test_permissions_granted_and_revoked_over_rest(secure: SecureNode) -> None:
    namespace = f"public/perm-{uuid.uuid4().hex[:6]}"
    topic = f"persistent://{namespace}/orders"
    secure.admin("PUT", f"/admin/v2/namespaces/{namespace}")
    alice = secure.client(pulsar.AuthenticationToken(token("alice", secure.secret)))
    try:
        with pytest.raises(pulsar.AuthorizationError):
            alice.create_producer(topic)
        with pytest.raises(pulsar.AuthorizationError):
            alice.subscribe(topic, "s")
        secure.admin("POST", f"/admin/v2/persistent/{namespace}/orders/permissions/alice", ["produce"])
        assert secure.admin("GET", f"/admin/v2/persistent/{namespace}/orders/permissions") == {"alice": ["produce"]}
        producer = alice.create_producer(topic)
        producer.send(b"one")
        with pytest.raises(pulsar.AuthorizationError):
            alice.subscribe(topic, "s")
        secure.admin("POST", f"/admin/v2/namespaces/{namespace}/permissions/alice", ["consume"])
        assert secure.admin("GET", f"/admin/v2/namespaces/{namespace}/permissions") == {"alice": ["consume"]}
        consumer = alice.subscribe(topic, "s")
        consumer.close()
        # A subscription reserved to another role.
        secure.admin("POST", f"/admin/v2/namespaces/{namespace}/permissions/subscription/billing", ["finance"])
        with pytest.raises(pulsar.AuthorizationError):
            alice.subscribe(topic, "billing")
        secure.admin("DELETE", f"/admin/v2/namespaces/{namespace}/permissions/alice")
        with pytest.raises(pulsar.AuthorizationError):
            alice.subscribe(topic, "s2")
        secure.admin("DELETE", f"/admin/v2/persistent/{namespace}/orders/permissions/alice")
        with pytest.raises(pulsar.AuthorizationError):
            alice.create_producer(topic)
        status, answer = secure.http("POST", f"/admin/v2/namespaces/{namespace}/permissions/alice", ["fly"],
                                     auth=f"Bearer {secure.super_token}")  # fmt: skip
        assert status == 400 and "fly" in answer["reason"]
    finally:
        alice.close()


def test_admin_routes_need_credentials_and_the_right_role(secure: SecureNode) -> None:
    suffix = uuid.uuid4().hex[:6]
    tenant_a, tenant_b = f"ta-{suffix}", f"tb-{suffix}"
    for tenant, admin in ((tenant_a, "admin-a"), (tenant_b, "admin-b")):
        secure.admin("PUT", f"/admin/v2/tenants/{tenant}", {"adminRoles": [admin], "allowedClusters": ["standalone"]})
    admin_a = f"Bearer {token('admin-a', secure.secret)}"
    # No credentials: the anonymous role, which administers nothing.
    status, answer = secure.http("PUT", f"/admin/v2/namespaces/{tenant_a}/ns")
    assert status == 403 and "reason" in answer
    status, answer = secure.http("GET", "/admin/v2/tenants", auth="Bearer not-a-token")
    assert status == 401 and "reason" in answer
    assert secure.http("PUT", f"/admin/v2/namespaces/{tenant_a}/ns", auth=admin_a)[0] == 204
    assert secure.http("POST", f"/admin/v2/namespaces/{tenant_a}/ns/permissions/app", ["produce"], auth=admin_a)[0] == 204
    # Tenant A's admin cannot touch tenant B, nor do what only super-users do.
    assert secure.http("PUT", f"/admin/v2/namespaces/{tenant_b}/ns", auth=admin_a)[0] == 403
    assert secure.http("GET", f"/admin/v2/namespaces/{tenant_b}", auth=admin_a)[0] == 403
    assert secure.http("DELETE", f"/admin/v2/tenants/{tenant_b}", auth=admin_a)[0] == 403
    assert secure.http("GET", "/admin/v2/tenants", auth=admin_a)[0] == 403
    assert secure.http("PUT", "/admin/v2/clusters/other", {"serviceUrl": "http://x:1"}, auth=admin_a)[0] == 403
    # Tenant admins produce and consume in their tenant without a grant.
    client = secure.client(pulsar.AuthenticationToken(token("admin-a", secure.secret)))
    try:
        roundtrip(client, f"persistent://{tenant_a}/ns/t", 1)
        with pytest.raises(pulsar.AuthorizationError):
            client.create_producer(f"persistent://{tenant_b}/ns-x/t")
    finally:
        client.close()
    # The plain HTTP port asks the same.
    assert secure.http("GET", "/admin/v2/tenants", tls=False)[0] == 403
    assert secure.http("GET", "/admin/v2/tenants", auth=f"Bearer {secure.super_token}", tls=False)[0] == 200


def test_an_expiring_token_is_refreshed_through_auth_challenge(secure: SecureNode) -> None:
    """The client's token lives 3 s; the broker checks every second and challenges; the
    client's supplier hands a fresh token; no message is lost and the producer never fails."""
    namespace = f"public/refresh-{uuid.uuid4().hex[:6]}"
    secure.admin("PUT", f"/admin/v2/namespaces/{namespace}",
                 {"auth_policies": {"namespace_auth": {"refresher": ["produce", "consume"]}}})  # fmt: skip
    issued = []

    def supplier() -> str:
        issued.append(time.monotonic())
        return token("refresher", secure.secret, "3s")

    client = secure.client(pulsar.AuthenticationToken(supplier))
    try:
        topic = f"persistent://{namespace}/t"
        consumer = client.subscribe(topic, "s")
        producer = client.create_producer(topic)
        sent = []
        deadline = time.monotonic() + 9
        while time.monotonic() < deadline:
            body = f"m{len(sent)}".encode()
            producer.send(body)
            sent.append(body)
            time.sleep(0.1)
        received = []
        while len(received) < len(sent):
            message = consumer.receive(timeout_millis=10_000)
            received.append(message.data())
            consumer.acknowledge(message)
        assert received == sent
        assert len(issued) >= 3, f"the token was refreshed ({len(issued)} issued)"
    finally:
        client.close()
    log = "\n".join(path.read_text(errors="replace") for path in secure.node.logs)
    assert "credentials expired and not refreshed" not in log


def test_certificates_reload_without_a_restart(secure: SecureNode) -> None:
    def served_organization() -> str:
        context = ssl.create_default_context(cafile=str(secure.pki.ca))
        with socket.create_connection(("127.0.0.1", secure.https_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                subject = dict(item[0] for item in tls.getpeercert()["subject"])
                return subject["organizationName"]

    assert served_organization() == "magnetar"
    key, cert = secure.pki.issue("broker-new", "localhost", server=True, organization="reloaded")
    secure.pki.broker_key.write_bytes(key.read_bytes())
    secure.pki.broker_cert.write_bytes(cert.read_bytes())
    deadline = time.monotonic() + 15
    while served_organization() != "reloaded":
        assert time.monotonic() < deadline, "the new certificate was not served"
        time.sleep(0.5)


def test_nothing_secret_reaches_metrics_or_logs(secure: SecureNode) -> None:
    status, _ = secure.http("GET", "/admin/v2/clusters", auth="Bearer " + secure.super_token)
    assert status == 200
    with urllib.request.urlopen(secure.node.http_url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "pulsar_authentication_success_total" in metrics
    secret_b64 = base64.b64encode(secure.secret.read_bytes()).decode()
    log = "\n".join(path.read_text(errors="replace") for path in secure.node.logs)
    for text in (metrics, log):
        assert secure.super_token not in text
        assert secret_b64 not in text
        assert "basic-password" not in text
