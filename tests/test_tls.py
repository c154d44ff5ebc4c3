"""TLS and mutual TLS on both front ends, the clients' TLS and token options, against real servers.

Every server here is a real recserve server (or, where the test must see what a client sent, a real gRPC
server of the same front end and TLS code that records the metadata it received). The certificates are
made at test time by the openssl CLI (`bench/certificates.py`): a CA, a server certificate for localhost and
127.0.0.1, a client certificate, and a second, unrelated CA with its own client and server certificates.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.certificates import Identity, Pki, make_pki
from recserve.client import AsyncRecommenderClient, RecommenderClient
from recserve.client.cli import build_client_parser
from recserve.client.credentials import channel_security
from recserve.client.loadtest.runner import native_transport_available
from recserve.server.frontend import bind_and_start, build_grpc_server, native_available
from recserve.server.servicers.reflection import add_reflection
from recserve.server.settings import ServerSettings, TlsSettings
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc
from tests.serving import ServerThread

RELOAD_INTERVAL_S = 1.0  # grpc++'s file watcher counts whole seconds
ROTATION_SLACK_S = 5.0  # two busy cores: the watcher thread or the next handshake may run late
HEALTH_SERVICE = "grpc.health.v1.Health"
RECOMMEND = "recserve.v1.Recommender.Recommend"
PROTO = Path(__file__).resolve().parent.parent / "protos" / "recserve" / "v1" / "recommender.proto"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# --- certificates ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, its server (localhost, 127.0.0.1) and client certificates; an unrelated CA with its own."""
    return make_pki(tmp_path_factory.mktemp("pki"))


class SecretVolume:
    """A directory laid out as the kubelet mounts a Secret, updated as the kubelet updates it.

    The files are symlinks into `..data`, itself a symlink to a timestamped directory; an update writes a
    new directory and swaps `..data` in one rename.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self._version = 0

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, files: dict[str, Path]) -> None:
        self._version += 1
        version = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self._version}"
        version.mkdir()
        for name, source in files.items():
            shutil.copy(source, version / name)
        staging = self.root / "..data_tmp"
        staging.symlink_to(version.name)
        os.replace(staging, self.root / "..data")
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(Path("..data") / name)


# --- servers ---------------------------------------------------------------------------------------------


def require_front_end(name: str) -> None:
    """Skip the native front end where it is not built; under CI it must be."""
    if name == "native" and not native_available():
        assert not os.environ.get("CI"), "under CI the grpc++ front end must be built (libgrpc++-dev)"
        pytest.skip("grpc++ front end not built (no libgrpc++-dev)")


def tls_settings(pki: Pki, mutual: bool, **overrides: Any) -> TlsSettings:
    return TlsSettings(
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        client_ca_file=pki.ca.cert if mutual else None,
        reload_interval_seconds=RELOAD_INTERVAL_S,
        **overrides,
    )


def start_tls_server(settings: ServerSettings, front_end: str, tls: TlsSettings) -> ServerThread:
    return ServerThread(settings.model_copy(update={"frontend": front_end, "tls": tls})).start()


@pytest.fixture(scope="module", params=["aio", "native"])
def front_end(request: pytest.FixtureRequest) -> str:
    require_front_end(request.param)
    return request.param


@pytest.fixture(scope="module")
def tls_server(server_settings: ServerSettings, pki: Pki, front_end: str) -> Iterator[ServerThread]:
    """TLS only: any client that trusts the CA."""
    server = start_tls_server(server_settings, front_end, tls_settings(pki, mutual=False))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(server_settings: ServerSettings, pki: Pki, front_end: str) -> Iterator[ServerThread]:
    """Mutual TLS (clients need a certificate from the CA), and the plaintext health port."""
    tls = tls_settings(pki, mutual=True, plaintext_health_port=0)
    server = start_tls_server(server_settings, front_end, tls)
    yield server
    server.stop()


def mtls_client(server: ServerThread, pki: Pki, **kwargs: Any) -> RecommenderClient:
    return RecommenderClient(
        server.address,
        root_certificates=pki.ca.cert,
        certificate_chain=pki.client.cert,
        private_key=pki.client.key,
        **kwargs,
    )


def served_certificate(port: int, client: Identity | None = None) -> bytes:
    """The certificate a new TLS connection to the port is shown (not verified: only compared)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as connection:
            return connection.getpeercert(binary_form=True)


def tls12_handshake(port: int, client: Identity | None) -> None:
    """A TLS 1.2 handshake, where the server judges the client's certificate before the handshake ends."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost"):
            pass


class RecordingServer:
    """A real gRPC server of the given front end and TLS settings whose Health/Check records the metadata
    of every call (what a client sent is what these tests check), with reflection for `recserve loadtest`."""

    def __init__(self, front_end: str, tls: TlsSettings) -> None:
        self.front_end, self.tls = front_end, tls
        self.metadata: list[dict[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="recording-server", daemon=True)

    async def _check(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.metadata.append({key: value for key, value in context.invocation_metadata()})
        return health_pb2.HealthCheckResponse(status=SERVING).SerializeToString()

    async def _start(self) -> int:
        self.server = build_grpc_server(self.front_end, [("grpc.so_reuseport", 0)], None)
        handler = grpc.method_handlers_generic_handler(
            HEALTH_SERVICE, {"Check": grpc.unary_unary_rpc_method_handler(self._check)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        add_reflection(self.server, [HEALTH_SERVICE])
        return await bind_and_start(self.server, "127.0.0.1:0", self.tls)

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        self.address = f"127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def recording_server(pki: Pki, front_end: str) -> Iterator[RecordingServer]:
    with RecordingServer(front_end, tls_settings(pki, mutual=False)) as server:
        yield server


def status_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()


# --- the server side ------------------------------------------------------------------------------------


def test_a_client_that_trusts_the_ca_is_served(tls_server: ServerThread, pki: Pki) -> None:
    with RecommenderClient(tls_server.address, root_certificates=pki.ca.cert) as client:
        assert len(client.recommend("user-3", k=5).items) == 5
    # PEM given as bytes, the name checked instead of the address's
    root = pki.ca.cert.read_bytes()
    with RecommenderClient(tls_server.address, root_certificates=root, server_name="localhost") as client:
        assert client.health() == "SERVING"

    async def asynchronous() -> int:
        async with AsyncRecommenderClient(tls_server.address, root_certificates=pki.ca.cert) as client:
            return len((await client.recommend("user-3", k=4)).items)

    assert asyncio.run(asynchronous()) == 4


def test_plaintext_and_untrusting_clients_fail(tls_server: ServerThread, pki: Pki) -> None:
    with RecommenderClient(tls_server.address, timeout_s=5) as plaintext:
        assert status_of(lambda: plaintext.recommend("user-3")) == grpc.StatusCode.UNAVAILABLE
    with RecommenderClient(tls_server.address, root_certificates=pki.other_ca.cert, timeout_s=5) as client:
        assert status_of(lambda: client.recommend("user-3")) == grpc.StatusCode.UNAVAILABLE
    with RecommenderClient(
        tls_server.address, root_certificates=pki.ca.cert, server_name="someone-else", timeout_s=5
    ) as client:
        assert status_of(lambda: client.recommend("user-3")) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_from_the_ca(mtls_server: ServerThread, pki: Pki) -> None:
    with mtls_client(mtls_server, pki) as client:
        assert len(client.recommend("user-3", k=3).items) == 3
    without = RecommenderClient(mtls_server.address, root_certificates=pki.ca.cert, timeout_s=5)
    other = RecommenderClient(
        mtls_server.address,
        root_certificates=pki.ca.cert,
        certificate_chain=pki.other_client.cert,
        private_key=pki.other_client.key,
        timeout_s=5,
    )
    for refused in (without, other):
        with refused:
            assert status_of(functools.partial(refused.recommend, "user-3")) == grpc.StatusCode.UNAVAILABLE
    # ... refused in the handshake itself, not after it
    for identity in (None, pki.other_client):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls12_handshake(mtls_server.running.port, identity)
    tls12_handshake(mtls_server.running.port, pki.client)


def wait_for_certificate(port: int, expected: bytes) -> None:
    started = time.monotonic()
    while True:
        try:
            if served_certificate(port) == expected:
                return
        except OSError:  # grpc++ refuses handshakes while the files do not fit together
            pass
        assert time.monotonic() - started < RELOAD_INTERVAL_S + ROTATION_SLACK_S, "not rotated"
        time.sleep(0.1)


def test_rotated_certificates_reach_new_connections_while_open_ones_keep_working(
    server_settings: ServerSettings, pki: Pki, front_end: str, tmp_path: Path
) -> None:
    secret = SecretVolume(tmp_path / "tls")
    secret.write({"tls.crt": pki.server.cert, "tls.key": pki.server.key})
    tls = TlsSettings(
        cert_file=secret.path("tls.crt"),
        key_file=secret.path("tls.key"),
        reload_interval_seconds=RELOAD_INTERVAL_S,
    )
    server = start_tls_server(server_settings, front_end, tls)
    try:
        port = server.running.port
        # This channel trusts only the first CA: after the rotation it could not connect again, so its
        # calls succeeding afterwards means its connection stayed open.
        with RecommenderClient(server.address, root_certificates=pki.ca.cert, timeout_s=10) as old:
            old.recommend("user-3", k=3)
            assert served_certificate(port) == pki.server.der
            secret.write({"tls.crt": pki.other_server.cert, "tls.key": pki.other_server.key})
            wait_for_certificate(port, pki.other_server.der)
            for _ in range(3):
                assert len(old.recommend("user-4", k=3).items) == 3
        with RecommenderClient(server.address, root_certificates=pki.other_ca.cert) as new:
            assert len(new.recommend("user-3", k=3).items) == 3
        with RecommenderClient(server.address, root_certificates=pki.ca.cert, timeout_s=5) as stale:
            assert status_of(lambda: stale.recommend("user-3")) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_unusable_rotated_files_are_taken_once_fixed(
    server_settings: ServerSettings, pki: Pki, front_end: str, tmp_path: Path
) -> None:
    secret = SecretVolume(tmp_path / "tls")
    secret.write({"tls.crt": pki.server.cert, "tls.key": pki.server.key})
    tls = TlsSettings(
        cert_file=secret.path("tls.crt"),
        key_file=secret.path("tls.key"),
        reload_interval_seconds=RELOAD_INTERVAL_S,
    )
    server = start_tls_server(server_settings, front_end, tls)
    try:
        port = server.running.port
        secret.write({"tls.crt": pki.other_server.cert, "tls.key": pki.server.key})  # a mismatched pair
        time.sleep(RELOAD_INTERVAL_S * 2.5)
        if front_end == "aio":  # keeps the last good certificate (grpc++ refuses new connections instead)
            assert served_certificate(port) == pki.server.der
        secret.write({"tls.crt": pki.other_server.cert, "tls.key": pki.other_server.key})
        wait_for_certificate(port, pki.other_server.der)
        with RecommenderClient(server.address, root_certificates=pki.other_ca.cert) as client:
            assert len(client.recommend("user-3", k=3).items) == 3
    finally:
        server.stop()


def test_the_plaintext_health_port_serves_the_same_health_and_nothing_else(
    mtls_server: ServerThread, pki: Pki
) -> None:
    running = mtls_server.running
    assert running.health_port and running.health_port != running.port
    address = f"127.0.0.1:{running.health_port}"

    def statuses() -> tuple[int, int, str]:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            whole = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            api = stub.Check(health_pb2.HealthCheckRequest(service="recserve.v1.Recommender"), timeout=5)
        with mtls_client(mtls_server, pki) as client:
            return whole, api.status, client.health()

    assert statuses() == (SERVING, SERVING, "SERVING")
    mtls_server.run(running.set_serving(False))
    try:
        assert statuses() == (NOT_SERVING, NOT_SERVING, "NOT_SERVING")
    finally:
        mtls_server.run(running.set_serving(True))
    with grpc.insecure_channel(address) as channel:
        recommend = recommender_pb2_grpc.RecommenderStub(channel).Recommend
        assert status_of(lambda: recommend(pb.RecommendRequest(user_id="user-3"), timeout=5)) == (
            grpc.StatusCode.UNIMPLEMENTED
        )
        reflection = channel.unary_unary("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        assert status_of(lambda: reflection(b"", timeout=5)) == grpc.StatusCode.UNIMPLEMENTED
        check = channel.unary_unary("/grpc.health.v1.Health/Check")  # raw bytes that do not decode
        assert status_of(lambda: check(b"\xff\xff", timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("front_end_name", "case", "complaint"),
    [
        ("auto", "missing certificate", "cannot read tls.cert_file"),
        ("auto", "key of another certificate", "is not the private key of tls.cert_file"),
        ("auto", "client CA without certificates", "tls.client_ca_file"),
        ("aio", "missing certificate", "cannot read tls.cert_file"),
    ],
)
def test_bad_tls_files_stop_the_server_with_one_line(
    model_repository: Path, pki: Pki, tmp_path: Path, front_end_name: str, case: str, complaint: str
) -> None:
    cert, key, client_ca = pki.server.cert, pki.server.key, None
    if case == "missing certificate":
        cert = tmp_path / "nowhere.pem"
    elif case == "key of another certificate":
        key = pki.client.key
    else:
        client_ca = write_text(tmp_path / "ca.pem", "not a certificate\n")
    command = [sys.executable, "-m", "recserve", "serve", "--grpc-port", "0", "--metrics-port", "0"]
    command += ["--model-repository", str(model_repository), "--frontend", front_end_name]
    command += ["--state-dir", str(tmp_path / "state"), "--tls-cert", str(cert), "--tls-key", str(key)]
    if client_ca is not None:
        command += ["--tls-client-ca", str(client_ca)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert finished.returncode == 2, finished.stderr
    lines = finished.stderr.splitlines()  # one line, no traceback
    assert len(lines) == 1 and lines[0].startswith("error: ") and complaint in lines[0], finished.stderr


# --- the client side -------------------------------------------------------------------------------------


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = build_client_parser().parse_args(argv)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_commands_speak_mutual_tls(
    mtls_server: ServerThread, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--target", mtls_server.address, "--cacert", str(pki.ca.cert)]
    flags += ["--cert", str(pki.client.cert), "--key", str(pki.client.key)]
    code, out, err = cli(["recommend", "--user", "user-3", "-k", "4", "--json", *flags], capsys)
    assert code == 0, err
    assert len(json.loads(out)["items"]) == 4
    assert cli(["health", *flags], capsys)[:2] == (0, "SERVING\n")
    # a live-state command: the server's own answer (its catalog service is off), so TLS worked
    code, _, err = cli(["item", "--item", "item-1", *flags], capsys)
    assert code == 1 and err.startswith("error: PERMISSION_DENIED"), err
    # without the client certificate the handshake fails
    code, _, err = cli(["health", "--timeout", "3", *flags[:4]], capsys)
    assert code == 1 and "UNAVAILABLE" in err


def test_cli_refuses_unusable_tls_flags(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["health", "--cert", str(pki.client.cert)], capsys)
    assert (code, err) == (2, "error: --cert and --key go together (mutual TLS): give both\n")
    missing = tmp_path / "missing.pem"
    code, _, err = cli(["health", "--cacert", str(missing)], capsys)
    assert (code, err) == (2, f"error: cannot read {missing}: No such file or directory\n")
    code, _, err = cli(["health", "--token", "two words"], capsys)
    assert code == 2 and "token" in err


def test_the_token_reaches_the_server_on_every_call(
    recording_server: RecordingServer, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    recording_server.metadata.clear()
    with RecommenderClient(
        recording_server.address, root_certificates=pki.ca.cert, token="library"
    ) as client:
        client.health()
        client.health()
    flags = ["--target", recording_server.address, "--cacert", str(pki.ca.cert)]
    assert cli(["health", *flags, "--token", "flag"], capsys)[0] == 0
    monkeypatch.setenv("RECSERVE_TOKEN", "from-environment")
    assert cli(["health", *flags], capsys)[0] == 0
    monkeypatch.delenv("RECSERVE_TOKEN")
    assert cli(["health", *flags], capsys)[0] == 0
    sent = [metadata.get("authorization") for metadata in recording_server.metadata]
    assert sent == ["Bearer library", "Bearer library", "Bearer flag", "Bearer from-environment", None]


# --- recserve loadtest -----------------------------------------------------------------------------------


@pytest.fixture(params=["aio", "native"])
def transport(request: pytest.FixtureRequest) -> str:
    if request.param == "native" and not native_transport_available():
        assert not os.environ.get("CI"), "under CI the grpc++ transport must be built (libgrpc++-dev)"
        pytest.skip("grpc++ transport not built (no libgrpc++-dev)")
    return request.param


def loadtest(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code, out, err = cli(["loadtest", *argv, "-O", "json"], capsys)
    return code, json.loads(out) if code == 0 else {}, err


def recommend_load(transport: str, address: str, *flags: str) -> list[str]:
    """Recommend from a .proto file, not reflection: every connection, failing or not, is the transport's."""
    return ["--transport", transport, "--call", RECOMMEND, "--proto", str(PROTO), "-d",
            '{"user_id":"user-3","k":5}', "-n", "30", "-c", "3", "--connect-timeout", "3s", *flags,
            address]  # fmt: skip


def test_loadtest_over_tls(
    tls_server: ServerThread, pki: Pki, transport: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, err = loadtest(
        recommend_load(transport, tls_server.address, "--cacert", str(pki.ca.cert)), capsys
    )
    assert code == 0, err
    assert report["statusCodeDistribution"] == {"OK": 30}
    named = recommend_load(
        transport, tls_server.address, "--cacert", str(pki.ca.cert), "--cname", "localhost"
    )
    assert loadtest(named, capsys)[1]["statusCodeDistribution"] == {"OK": 30}
    wrong_name = recommend_load(transport, tls_server.address, "--cacert", str(pki.ca.cert), "--cname", "x")
    plaintext = recommend_load(transport, tls_server.address, "--insecure")
    for argv in (wrong_name, plaintext):
        code, _, err = loadtest(argv, capsys)
        assert code == 1 and "error:" in err


def test_loadtest_over_mutual_tls(
    mtls_server: ServerThread, pki: Pki, transport: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--cacert", str(pki.ca.cert), "--cert", str(pki.client.cert), "--key", str(pki.client.key)]
    code, report, err = loadtest(recommend_load(transport, mtls_server.address, *flags), capsys)
    assert code == 0, err
    assert report["statusCodeDistribution"] == {"OK": 30}
    code, _, err = loadtest(recommend_load(transport, mtls_server.address, *flags[:2]), capsys)
    assert code == 1 and "error:" in err, "no client certificate: refused"


def test_loadtest_metadata_reaches_the_server_over_tls(
    recording_server: RecordingServer, pki: Pki, transport: str, capsys: pytest.CaptureFixture[str]
) -> None:
    recording_server.metadata.clear()
    argv = ["--transport", transport, "--call", f"{HEALTH_SERVICE}/Check", "--cacert", str(pki.ca.cert),
            "-m", '{"authorization":"Bearer x"}', "-n", "12", "-c", "2",
            recording_server.address]  # fmt: skip
    code, report, err = loadtest(argv, capsys)
    assert code == 0, err
    assert report["statusCodeDistribution"] == {"OK": 12}
    assert [metadata.get("authorization") for metadata in recording_server.metadata] == ["Bearer x"] * 12


def test_client_pem_material_is_checked_before_any_handshake(pki: Pki, tmp_path: Path) -> None:
    """Junk CA files, a key of another certificate: ValueError naming the flag, not UNAVAILABLE later."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match=r"CA certificates \(--cacert\) are not PEM"):
        channel_security(root_certificates=junk)
    with pytest.raises(ValueError, match=r"--cert\) and key \(--key\) do not load as a pair"):
        channel_security(
            root_certificates=pki.ca.cert, certificate_chain=pki.client.cert, private_key=pki.server.key
        )
    security = channel_security(
        root_certificates=pki.ca.cert, certificate_chain=pki.client.cert, private_key=pki.client.key
    )
    assert security.credentials is not None
