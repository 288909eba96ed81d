"""TLS on the signing listener: its files, loaded again when they change, and the caller that a
client certificate names.

cert-manager and the kubelet rotate a Secret's files in place. A listener's SSL context cannot
be replaced under a running server, so the listener keeps the context it started with and its
SNI callback (which OpenSSL calls for every ClientHello, server name or not) hands each new
handshake the newest context. Connections already open keep theirs: nothing is dropped. A file
that does not load leaves the previous context in use.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

#: What identifies a file's version: a replaced file (or the symlink a Secret volume swaps)
#: has another inode, an edited one another mtime or size.
_Stamp = tuple[int, int, int] | None


class TlsError(ValueError):
    """A TLS file that cannot be loaded; the message is one line naming it."""


class ServerTls:
    """The signing listener's SSL contexts: the one it was opened with, and the newest."""

    def __init__(
        self, cert_file: str, key_file: str, client_ca_file: str = "", *, require_cert: bool
    ) -> None:
        """``client_ca_file``: ask for client certificates and verify them against these CAs;
        ``require_cert``: refuse a handshake without one (only certificates identify callers)."""
        self._files = tuple(path for path in (cert_file, key_file, client_ca_file) if path)
        self._cert_file, self._key_file, self._client_ca_file = cert_file, key_file, client_ca_file
        self._require_cert = require_cert
        self._stamps = self._stat()
        self.listener_context = self.current = self._build()
        self.listener_context.sni_callback = self._hand_over

    def _hand_over(self, ssl_object: Any, _server_name: str | None, context: Any) -> None:
        current = self.current
        if current is not context:
            ssl_object.context = current

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self._cert_file, self._key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TlsError(
                f"tls_cert_file {self._cert_file}, tls_key_file {self._key_file}: "
                f"cannot be loaded as a certificate chain and its key: {_why(exc)}"
            ) from None
        if self._client_ca_file:
            try:
                context.load_verify_locations(cafile=self._client_ca_file)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise TlsError(
                    f"tls_client_ca_file {self._client_ca_file}: cannot be loaded as PEM CA "
                    f"certificates: {_why(exc)}"
                ) from None
            context.verify_mode = ssl.CERT_REQUIRED if self._require_cert else ssl.CERT_OPTIONAL
        return context

    def _stat(self) -> tuple[_Stamp, ...]:
        stamps: list[_Stamp] = []
        for path in self._files:
            try:
                info = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def changed(self) -> bool:
        """Whether a file differs from what was last loaded (or last failed to load)."""
        return self._stat() != self._stamps

    def reload(self) -> None:
        """Load the files again for new handshakes; TlsError (the old context stays) if they
        do not load."""
        self._stamps = self._stat()
        self.current = self._build()


def certificate_caller(peercert: Any) -> str | None:
    """The caller a verified client certificate names: its URI SAN (a SPIFFE ID), else its
    first DNS SAN; None without a certificate or without either."""
    if not peercert:
        return None
    names = peercert.get("subjectAltName", ())
    for kind in ("URI", "DNS"):
        for name_kind, value in names:
            if name_kind == kind and value:
                return str(value)
    return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
