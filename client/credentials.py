"""How a client reaches the server: plaintext or TLS (mutual TLS with a client certificate), and a token.

PEM material is given either as `bytes`, the PEM text itself, or as a path (`str` or `os.PathLike`) to a
PEM file, read once when the client is created. The bearer token travels as `authorization: Bearer <token>`
metadata on every call; over plaintext anyone on the path can read it, so give TLS with it outside a
trusted network.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

PemSource = bytes | str | os.PathLike[str]
AUTHORIZATION = "authorization"
TARGET_NAME_OVERRIDE = "grpc.ssl_target_name_override"


@dataclass(frozen=True)
class ChannelSecurity:
    """What a channel needs beyond its target: credentials (None: plaintext), options, call metadata."""

    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, str], ...]
    metadata: tuple[tuple[str, str], ...]


def read_pem(source: PemSource | None) -> bytes | None:
    """The PEM bytes of `source`: bytes as given, a path read from disk.

    Raises:
        OSError: the file cannot be read (`filename` names it).
    """
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def channel_security(
    *,
    tls: bool = False,
    root_certificates: PemSource | None = None,
    certificate_chain: PemSource | None = None,
    private_key: PemSource | None = None,
    server_name: str | None = None,
    token: str | None = None,
) -> ChannelSecurity:
    """Credentials, options and metadata from a client's TLS and token arguments.

    TLS is on with `tls=True` or when any certificate argument is given; without `root_certificates` the
    server is verified against the system's roots. `server_name` replaces the target's host name in that
    check (a certificate for `recserve.internal` dialled as `10.0.0.7:8001`).

    Raises:
        ValueError: a client certificate without its key (or the reverse), `server_name` without TLS, or
            PEM material that is no certificate, a key that is not the certificate's or is encrypted.
        OSError: a PEM file cannot be read.
    """
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("certificate_chain and private_key go together (mutual TLS): give both or neither")
    use_tls = tls or root_certificates is not None or certificate_chain is not None
    if server_name and not use_tls:
        raise ValueError("server_name only applies to TLS: give root_certificates or tls=True")
    credentials = None
    if use_tls:
        roots, key, chain = read_pem(root_certificates), read_pem(private_key), read_pem(certificate_chain)
        check_pem(roots, chain, key)
        credentials = grpc.ssl_channel_credentials(roots, key, chain)
    options = ((TARGET_NAME_OVERRIDE, server_name),) if server_name else ()
    return ChannelSecurity(credentials, options, bearer_metadata(token))


def check_pem(roots: bytes | None, chain: bytes | None, key: bytes | None) -> None:
    """Refuse PEM material grpc would only reject at the handshake, as an unexplained UNAVAILABLE.

    Raises:
        ValueError: `roots` holds no certificate; `chain` and `key` do not load as a pair (not PEM, a key
            of another certificate, or an encrypted key: grpc cannot ask for its passphrase).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if roots is not None:
        try:
            context.load_verify_locations(cadata=roots.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(f"the CA certificates (--cacert) are not PEM certificates ({error})") from None
    if chain is None or key is None:
        return
    with tempfile.TemporaryDirectory() as directory:
        chain_file, key_file = Path(directory, "chain.pem"), Path(directory, "key.pem")
        chain_file.write_bytes(chain)
        key_file.touch(0o600)
        key_file.write_bytes(key)
        try:
            context.load_cert_chain(chain_file, key_file, password=lambda: b"")
        except ssl.SSLError as error:
            raise ValueError(
                "the client certificate (--cert) and key (--key) do not load as a pair: not PEM, a key of "
                f"another certificate, or an encrypted key ({error.reason or error})"
            ) from None


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <token>`, or nothing without a token.

    Raises:
        ValueError: an empty token, or one with whitespace or control characters (it would not survive
            as one header value).
    """
    if token is None:
        return ()
    if not token or any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ValueError("the token must be non-empty, printable and without spaces")
    return ((AUTHORIZATION, f"Bearer {token}"),)
