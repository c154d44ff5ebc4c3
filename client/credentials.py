"""How a client reaches the server: plaintext or TLS (mutual TLS with a client certificate), and a token.

PEM material is given either as `bytes`, the PEM text itself, or as a path (`str` or `os.PathLike`) to a
PEM file, read once when the client is created. The bearer token travels as `authorization: Bearer <token>`
metadata on every call; over plaintext anyone on the path can read it, so give TLS with it outside a
trusted network.
"""

from __future__ import annotations

import os
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
        ValueError: a client certificate without its key (or the reverse), or `server_name` without TLS.
        OSError: a PEM file cannot be read.
    """
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("certificate_chain and private_key go together (mutual TLS): give both or neither")
    use_tls = tls or root_certificates is not None or certificate_chain is not None
    if server_name and not use_tls:
        raise ValueError("server_name only applies to TLS: give root_certificates or tls=True")
    credentials = (
        grpc.ssl_channel_credentials(
            read_pem(root_certificates), read_pem(private_key), read_pem(certificate_chain)
        )
        if use_tls
        else None
    )
    options = ((TARGET_NAME_OVERRIDE, server_name),) if server_name else ()
    return ChannelSecurity(credentials, options, bearer_metadata(token))


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
