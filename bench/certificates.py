"""Throwaway certificates from the openssl CLI, for the TLS tests and the TLS benchmark.

`make_pki(directory)`: two unrelated CAs (EC P-256, valid two days), each with a server certificate for
localhost and 127.0.0.1 and a client certificate. Nothing here is fit for production use.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
SERVER_EXTENSIONS = "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1"
CLIENT_EXTENSIONS = "extendedKeyUsage=clientAuth"
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path

    @property
    def der(self) -> bytes:
        """The certificate as a TLS handshake sends it."""
        return ssl.PEM_cert_to_DER_cert(self.cert.read_text())


@dataclass(frozen=True)
class Pki:
    """Two unrelated CAs and what each signed."""

    ca: Identity
    server: Identity
    client: Identity
    other_ca: Identity
    other_server: Identity
    other_client: Identity


def openssl(*args: str, cwd: Path) -> None:
    """Run the openssl CLI. Raises RuntimeError with its stderr when it fails."""
    done = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def make_ca(directory: Path, name: str) -> Identity:
    """A self-signed CA certificate `name.pem` and its key `name.key` in `directory`."""
    openssl(
        "req", "-x509", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return Identity(directory / f"{name}.pem", directory / f"{name}.key")


def make_leaf(directory: Path, name: str, ca: Identity, extensions: str) -> Identity:
    """A certificate `name.pem` signed by `ca`, with the given X.509v3 extensions, and its key."""
    (directory / f"{name}.ext").write_text(f"basicConstraints=CA:FALSE\n{extensions}\n")
    openssl(
        "req", "-new", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-extfile", f"{name}.ext",
        "-out", f"{name}.pem",
        cwd=directory,
    )  # fmt: skip
    return Identity(directory / f"{name}.pem", directory / f"{name}.key")


def make_pki(directory: Path) -> Pki:
    """Both CAs with their server and client certificates, written into `directory`."""
    ca, other_ca = make_ca(directory, "ca"), make_ca(directory, "other-ca")
    return Pki(
        ca=ca,
        server=make_leaf(directory, "server", ca, SERVER_EXTENSIONS),
        client=make_leaf(directory, "client", ca, CLIENT_EXTENSIONS),
        other_ca=other_ca,
        other_server=make_leaf(directory, "other-server", other_ca, SERVER_EXTENSIONS),
        other_client=make_leaf(directory, "other-client", other_ca, CLIENT_EXTENSIONS),
    )
