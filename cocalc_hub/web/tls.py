"""TLS on the hub's listener: ``ssl:`` endpoints whose certificate reloads in place, ALPN, and
one log line per failed handshake.

Browsers and curl offer ALPN (``h2, http/1.1``). The listener's factory declares
``http/1.1`` (:data:`ALPN`, through ``IProtocolNegotiationFactory``) so that Twisted's
server contexts agree on it; a context that declares nothing fails every handshake in which
the client offers ALPN. That declaration lives on the factory, so it holds for every TLS
endpoint an operator can write (``ssl:``, ``tls:``, ``txsni:``…).

``ssl:`` descriptions (what ``--https-key``/``--https-cert`` become too) are read here rather
than by ``serverFromString``, into :class:`ReloadableTLS`: the certificate files are read
again on :meth:`ReloadableTLS.reload` (SIGHUP), new connections get the new certificate and
open ones keep theirs. A file that cannot be loaded keeps the old certificate and says why.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cocalc_hub.reactors import IReactorListen

log = Logger()

ALPN: Sequence[bytes] = (b"http/1.1",)
"""What the hub speaks after a TLS handshake. Never h2: the front door is HTTP/1.1."""

EXPIRY_WARNING = datetime.timedelta(days=14)

DEFAULT_BACKLOG = 4096
"""The listen queue of a ``tcp:``, ``tcp6:``, ``ssl:`` or ``unix:`` listener that does not
say ``backlog=``. Twisted's 50 drops the SYNs of a reconnect storm (every client of a
restarted hub at once): each dropped client retries after 1 s, 3 s, 7 s… and recovery
takes tens of seconds instead of the time the hub needs to accept them. The kernel caps
it at ``net.core.somaxconn`` (4096 by default since Linux 5.4)."""

# Where a positional backlog sits after the port (address) in Twisted's descriptions.
_BACKLOG_POSITION = {"tcp": 2, "tcp6": 1, "unix": 2}


class TlsConfigError(Exception):
    """A TLS listener cannot be built; str() names the file and the problem."""


@dataclass(frozen=True)
class TlsFiles:
    """The files of an ``ssl:`` endpoint (Twisted's parameter names)."""

    private_key: str
    cert_key: str
    extra_cert_chain: str | None = None
    dh_parameters: str | None = None
    ssl_method: str | None = None


@dataclass(frozen=True)
class SslEndpoint:
    port: int
    interface: str
    backlog: int
    files: TlsFiles


# Twisted's ssl: parameters, in the order they may also be given positionally after the port.
_SSL_PARAMETERS = ("privateKey", "certKey", "sslmethod", "interface", "backlog", "extraCertChain", "dhParameters")


def _split_keyword(field: str) -> tuple[str | None, str]:
    """``key=value`` (the first unescaped ``=``) or a positional value."""
    i = 0
    while i < len(field):
        if field[i] == "\\":
            i += 2
            continue
        if field[i] == "=":
            return field[:i].replace("\\", ""), _unescape(field[i + 1:])
        i += 1
    return None, _unescape(field)


def _unescape(value: str) -> str:
    out, chars = [], iter(value)
    for c in chars:
        out.append(next(chars, "") if c == "\\" else c)
    return "".join(out)


def _raw_fields(description: str) -> list[str]:
    """Fields split at unescaped ``:``, escapes kept (``=`` inside a value must stay escaped)."""
    fields, current, i = [], "", 0
    while i < len(description):
        c = description[i]
        if c == "\\" and i + 1 < len(description):
            current += description[i:i + 2]
            i += 2
            continue
        if c == ":":
            fields.append(current)
            current = ""
        else:
            current += c
        i += 1
    fields.append(current)
    return fields


def parse_ssl(description: str) -> SslEndpoint | None:
    """The parts of an ``ssl:PORT:…`` description, or None for any other endpoint type."""
    fields = _raw_fields(description)
    if fields[0] != "ssl":
        return None
    if len(fields) < 2 or not re.fullmatch(r"[0-9]{1,5}", fields[1]) or int(fields[1]) > 65535:
        raise TlsConfigError(f"{description!r}: ssl: needs a port number first (ssl:PORT:privateKey=…)")
    values: dict[str, str] = {}
    positional = iter(_SSL_PARAMETERS)
    for field in fields[2:]:
        key, value = _split_keyword(field)
        if key is None:
            key = next(positional, None)
            if key is None:
                raise TlsConfigError(f"{description!r}: too many positional parameters")
        if key not in _SSL_PARAMETERS:
            raise TlsConfigError(f"{description!r}: unknown ssl: parameter {key!r} "
                                 f"(known: {', '.join(_SSL_PARAMETERS)})")
        values[key] = value
    backlog = values.get("backlog", str(DEFAULT_BACKLOG))
    if not re.fullmatch(r"[0-9]{1,6}", backlog):
        raise TlsConfigError(f"{description!r}: backlog {backlog!r} is not a number")
    key_file = values.get("privateKey", "server.pem")
    files = TlsFiles(private_key=key_file, cert_key=values.get("certKey", key_file),
                     extra_cert_chain=values.get("extraCertChain"), dh_parameters=values.get("dhParameters"),
                     ssl_method=values.get("sslmethod"))
    return SslEndpoint(int(fields[1]), values.get("interface", ""), int(backlog), files)


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=`` :data:`DEFAULT_BACKLOG` added when it is a ``tcp:``,
    ``tcp6:`` or ``unix:`` listener that gives no backlog (by keyword or by position)."""
    fields = _raw_fields(description)
    position = _BACKLOG_POSITION.get(fields[0])
    if position is None:
        return description
    keys = [_split_keyword(field)[0] for field in fields[2:]]
    if "backlog" in keys or sum(key is None for key in keys) >= position:
        return description
    return f"{description}:backlog={DEFAULT_BACKLOG}"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsConfigError(f"cannot read the {what} {path!r}: {e.strerror or e}") from None


def _certificates(pem: bytes, path: str) -> list[crypto.X509]:
    blocks = [b"-----BEGIN CERTIFICATE-----" + part.split(b"-----END CERTIFICATE-----")[0]
              + b"-----END CERTIFICATE-----\n" for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    try:
        certs = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as e:
        raise TlsConfigError(f"{path!r}: not a valid PEM certificate ({_openssl_reason(e)})") from None
    if not certs:
        raise TlsConfigError(f"{path!r} holds no PEM certificate")
    return certs


def load_options(files: TlsFiles) -> ssl.CertificateOptions:
    """CertificateOptions for the files, checked now (key matches certificate, chain parses)."""
    cert_pem = _read(files.cert_key, "certificate")
    key_pem = cert_pem if files.private_key == files.cert_key else _read(files.private_key, "private key")
    certs = _certificates(cert_pem, files.cert_key)
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as e:
        raise TlsConfigError(f"{files.private_key!r}: not a valid PEM private key ({_openssl_reason(e)})") from None
    # A certificate file may carry its chain after the leaf (fullchain.pem, as certbot writes it).
    chain = certs[1:]
    if files.extra_cert_chain is not None:
        chain += _certificates(_read(files.extra_cert_chain, "certificate chain"), files.extra_cert_chain)
    kwargs: dict[str, Any] = {}
    if files.ssl_method is not None:
        method = getattr(SSL, files.ssl_method, None)
        if not isinstance(method, int):
            raise TlsConfigError(f"sslmethod {files.ssl_method!r} is not an OpenSSL method name")
        kwargs["method"] = method
    if files.dh_parameters is not None:
        _read(files.dh_parameters, "DH parameters")
        from twisted.python.filepath import FilePath

        kwargs["dhParameters"] = ssl.DiffieHellmanParameters.fromFile(FilePath(files.dh_parameters))
    try:
        options = ssl.CertificateOptions(privateKey=key, certificate=certs[0],
                                         extraCertChain=chain or None, **kwargs)
        options.getContext()  # builds the context: a key that does not match fails here
    except (SSL.Error, ValueError) as e:
        reason = _openssl_reason(e) if isinstance(e, SSL.Error) else str(e)
        raise TlsConfigError(f"{files.private_key!r} and {files.cert_key!r} do not work together: {reason}") from None
    return options


def describe_certificate(options: ssl.CertificateOptions) -> tuple[str, datetime.datetime]:
    """(subject, not-after) of the certificate the options serve."""
    assert options.certificate is not None
    cert = options.certificate.to_cryptography()
    return cert.subject.rfc4514_string() or "(no subject)", cert.not_valid_after_utc


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """Server TLS connections from certificate files that :meth:`reload` reads again."""

    def __init__(self, files: TlsFiles, clock: IReactorTime) -> None:
        self.files = files
        self.clock = clock
        self.options = load_options(files)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self.options.serverConnectionForTLS(tlsProtocol)

    def describe(self) -> None:
        """Log what is served, and warn when it expires soon (or has)."""
        subject, until = describe_certificate(self.options)
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        if until <= now:
            log.error("TLS certificate {subject} ({path}) EXPIRED on {until}; browsers refuse it. Renew it and "
                      "send SIGHUP", subject=subject, path=self.files.cert_key, until=until.isoformat())
        elif until - now <= EXPIRY_WARNING:
            log.warn("TLS certificate {subject} ({path}) expires on {until}; renew it and send SIGHUP",
                     subject=subject, path=self.files.cert_key, until=until.isoformat())
        else:
            log.info("TLS certificate {subject} ({path}) valid until {until}; SIGHUP reloads it",
                     subject=subject, path=self.files.cert_key, until=until.isoformat())

    def reload(self) -> bool:
        """Read the files again; on failure keep serving the old certificate (and say so)."""
        try:
            options = load_options(self.files)
        except TlsConfigError as e:
            log.error("TLS certificate not reloaded, still serving the previous one: {error}", error=str(e))
            return False
        self.options = options
        log.info("TLS certificate reloaded from {path}; new connections use it", path=self.files.cert_key)
        self.describe()
        return True


def server_endpoint(reactor: IReactorListen, description: str) -> tuple[IStreamServerEndpoint, ReloadableTLS | None]:
    """The endpoint for a listener description, and its reloadable TLS for ``ssl:``."""
    parsed = parse_ssl(description)
    if parsed is None:
        return serverFromString(reactor, with_backlog(description)), None
    tls = ReloadableTLS(parsed.files, reactor)
    endpoint = SSL4ServerEndpoint(reactor, parsed.port, tls, backlog=parsed.backlog, interface=parsed.interface)
    return endpoint, tls


def _openssl_reason(e: BaseException | None) -> str:
    """The human part of an OpenSSL error: 'no application protocol', 'sslv3 alert bad certificate'…"""
    if e is None:
        return "unknown error"
    args = e.args[0] if e.args else None
    if isinstance(args, list):
        reasons = [str(item[-1]) for item in args if isinstance(item, tuple) and item and item[-1]]
        if reasons:
            return "; ".join(reasons)
    return str(e) or type(e).__name__


class HandshakeFailures:
    """One log line per failed TLS handshake (peer, reason), at most ``per_minute`` a minute;
    beyond that, one summary line a minute, so a scanner cannot flood the log."""

    def __init__(self, clock: IReactorTime, per_minute: int = 30, count: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.per_minute = per_minute
        self.count = count
        self._window = -1.0
        self._logged = 0
        self._suppressed = 0

    def failed(self, peer: str, reason: Failure) -> None:
        if not reason.check(SSL.Error):
            # Closed before or during the handshake without a TLS error: port probes, load
            # balancers' TCP checks, impatient clients. Not a failure of the handshake itself.
            log.debug("{peer} closed the connection before the TLS handshake ended", peer=peer)
            return
        why = _openssl_reason(reason.value)
        if self.count is not None:
            self.count()
        now = self.clock.seconds()
        if now - self._window >= 60:
            if self._suppressed:
                log.warn("{n} more TLS handshake failures in the last minute were not logged one by one",
                         n=self._suppressed)
            self._window, self._logged, self._suppressed = now, 0, 0
        if self._logged >= self.per_minute:
            self._suppressed += 1
            return
        self._logged += 1
        log.warn("TLS handshake with {peer} failed: {reason}", peer=peer, reason=why)
