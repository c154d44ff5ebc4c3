"""TLS and mutual TLS on the gRPC port, on either front end; certificates are re-read when their files change.

Kubernetes rotates a mounted Secret in place: the new files appear in a new directory and one symlink swap
makes them current. So the files are always opened by the configured path (never resolved once), and
checked again every `tls.reload_interval_seconds`: grpc.aio asks `ReloadingCertificates` at each new
connection's handshake, grpc++ runs its own `FileWatcherCertificateProvider`. A changed certificate reaches
new connections only; connections already open keep the one they were set up with.

The files are checked here before either front end sees them, so a missing or unreadable file, or a key
that does not belong to the certificate, stops the server with one line naming the setting (`StartupError`)
instead of a server whose every handshake fails.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from recserve.server.exceptions import StartupError
from recserve.server.settings import TlsSettings

logger = logging.getLogger(__name__)

READ_ATTEMPTS = 3  # a rotation landing between the two reads of one check is read again


class CertificateError(Exception):
    """The TLS files cannot be used as they are; the message names the setting and the file."""


class _EncryptedKeyError(Exception):
    """Raised from the password callback: a server cannot ask anyone for a passphrase."""


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes of one consistent read of the TLS files."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None


def read_material(tls: TlsSettings) -> TlsMaterial:
    """Read the files and check them: the key matches the certificate, the client CA holds certificates.

    The files are read before and after the check and must be the same both times, so a rotation in the
    middle of it is never taken half old, half new.

    Raises:
        CertificateError: a file cannot be read or parsed, the key does not match, or the files kept
            changing.
    """
    for _ in range(READ_ATTEMPTS):
        before = _read(tls)
        _check(tls)
        if _read(tls) == before:
            return before
    raise CertificateError("the TLS files kept changing while they were being read")


def check_files(tls: TlsSettings) -> TlsMaterial:
    """`read_material` for startup: what is wrong becomes a `StartupError` (one line, exit code 2)."""
    try:
        return read_material(tls)
    except CertificateError as error:
        raise StartupError(str(error)) from error


def _read(tls: TlsSettings) -> TlsMaterial:
    assert tls.cert_file is not None and tls.key_file is not None
    client_ca = _read_file("tls.client_ca_file", tls.client_ca_file) if tls.client_ca_file else None
    return TlsMaterial(
        _read_file("tls.cert_file", tls.cert_file), _read_file("tls.key_file", tls.key_file), client_ca
    )


def _read_file(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CertificateError(f"cannot read {setting} {path} ({error.strerror or error})") from error


def _check(tls: TlsSettings) -> None:
    """Parse the files as a TLS server would, through the ssl module (OpenSSL)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_certificates(context, "tls.cert_file", tls.cert_file)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_passphrase)
    except _EncryptedKeyError as error:
        raise CertificateError(
            f"tls.key_file {tls.key_file} is encrypted: recserve needs an unencrypted PEM key"
        ) from error
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error):
            raise CertificateError(
                f"tls.key_file {tls.key_file} is not the private key of tls.cert_file {tls.cert_file}"
            ) from error
        raise CertificateError(
            f"tls.key_file {tls.key_file} is not a PEM private key ({_reason(error)})"
        ) from error
    if tls.client_ca_file is not None:
        _load_certificates(context, "tls.client_ca_file", tls.client_ca_file)


def _load_certificates(context: ssl.SSLContext, setting: str, path: Path | None) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError) as error:
        raise CertificateError(f"{setting} {path} holds no PEM certificate ({_reason(error)})") from error
    except OSError as error:  # replaced since it was read: the caller's second read decides
        raise CertificateError(f"cannot read {setting} {path} ({error.strerror or error})") from error


def _reason(error: Exception) -> str:
    return getattr(error, "reason", None) or str(error)


def _refuse_passphrase() -> bytes:
    raise _EncryptedKeyError()


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.certificate_chain)], root_certificates=material.client_ca
    )


class ReloadingCertificates:
    """grpc.aio's certificate-configuration fetcher: the files as they are now, looked at once per interval.

    grpc calls it at each new connection's handshake (on one of its own threads), so it must be cheap: it
    reads the files at most once per `tls.reload_interval_seconds` and answers None (keep the current
    certificates) otherwise. Files that changed but cannot be used are logged once and left alone: the
    server keeps the last good certificates until they are fixed.
    """

    def __init__(
        self, tls: TlsSettings, material: TlsMaterial, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._tls = tls
        self._current = material
        self._clock = clock
        self._checked_at = clock()
        self._last_problem = ""
        self._lock = threading.Lock()

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that start with the current material and then ask this fetcher."""
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._current),
            self,
            require_client_authentication=self._current.client_ca is not None,
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if the files changed since they were last read, else None."""
        with self._lock:
            now = self._clock()
            if now - self._checked_at < self._tls.reload_interval_seconds:
                return None
            self._checked_at = now
            material = self._changed_material()
            if material is None:
                return None
            self._current, self._last_problem = material, ""
        logger.info("TLS: the certificate files changed; new connections get the new certificate")
        return _configuration(material)

    def _changed_material(self) -> TlsMaterial | None:
        try:
            if _read(self._tls) == self._current:
                return None
            return read_material(self._tls)
        except CertificateError as error:
            if str(error) != self._last_problem:
                self._last_problem = str(error)
                logger.warning("TLS: %s; keeping the certificate loaded before", error)
            return None


def native_refresh_interval_s(tls: TlsSettings) -> int:
    """grpc++'s file watcher counts whole seconds, at least one."""
    return max(1, math.ceil(tls.reload_interval_seconds))


def add_secure_port(server: Any, address: str, tls: TlsSettings) -> int:
    """Add a TLS (mutual TLS with `tls.client_ca_file`) address to a server of either front end.

    Returns what the server's own add-port call returns (grpc.aio: the bound port; grpc++: the index of
    the address, bound in `start()`).

    Raises:
        StartupError: the files are missing, unreadable or do not fit together.
    """
    material = check_files(tls)
    logger.info(
        "TLS on %s: %s; the certificate files are checked for changes every %gs",
        address,
        f"mutual TLS, client certificates signed by {tls.client_ca_file}" if tls.client_ca_file else "TLS",
        tls.reload_interval_seconds,
    )
    if isinstance(server, grpc.aio.Server):
        return server.add_secure_port(address, ReloadingCertificates(tls, material).credentials())
    assert tls.cert_file is not None and tls.key_file is not None
    # Absolute, not resolved: the watcher must follow the symlinks a Secret update swaps.
    return server.add_tls_port(
        address,
        os.path.abspath(tls.key_file),
        os.path.abspath(tls.cert_file),
        os.path.abspath(tls.client_ca_file) if tls.client_ca_file else "",
        native_refresh_interval_s(tls),
    )
