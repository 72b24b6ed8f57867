"""What went wrong with a network connection: one pure classifier for the REST and WebSocket sides.

:mod:`device.drivers.agent_http` (http.client) and :mod:`device.drivers.session` (websocket-client)
both turn a failed connection into one line that says what failed and what to
do. The library exceptions differ; what they wrap does not: the socket
module's errors, ``ssl`` errors, OS errors with an errno. :func:`classify`
walks the chain of causes and decides on those types (each caller adds its
library's own types through ``library``); :func:`describe` words the line.
No I/O, no library imports (each library has one owner module).
"""

from __future__ import annotations

import enum
import errno
import socket
import ssl
from collections.abc import Mapping


class NetFailure(enum.Enum):
    """How a connection failed; earlier members win when a chain shows several."""

    TLS = "tls"
    PROXY = "proxy"
    DNS = "dns"
    REFUSED = "refused"
    CONNECT_TIMEOUT = "connect_timeout"
    TIMEOUT = "timeout"
    RESET = "reset"
    UNREACHABLE = "unreachable"
    FAILED = "failed"  # any other OS-level connection failure


_ORDER = list(NetFailure)
_UNREACHABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})
# OpenSSL's X509 verify codes (X509_V_ERR_*) worth a sentence of their own.
_CERT_EXPIRED = 10
_CERT_NOT_YET_VALID = 9
_HOSTNAME_MISMATCH = 62


def causes(e: BaseException, limit: int = 12) -> list[BaseException]:
    """``e`` and what it wraps: ``__cause__``, ``__context__``, exceptions in ``args``, urllib3's ``reason``."""
    out: list[BaseException] = []
    todo = [e]
    while todo and len(out) < limit:
        cur = todo.pop(0)
        if any(cur is seen for seen in out):
            continue
        out.append(cur)
        reason = getattr(cur, "reason", None)
        todo += [x for x in (cur.__cause__, cur.__context__, *cur.args, reason) if isinstance(x, BaseException)]
    return out


def _own_kind(x: BaseException) -> NetFailure | None:
    if isinstance(x, (ssl.SSLError, ssl.CertificateError)):
        return NetFailure.TLS
    if isinstance(x, socket.gaierror):
        return NetFailure.DNS
    if isinstance(x, ConnectionRefusedError):
        return NetFailure.REFUSED
    if isinstance(x, TimeoutError):  # socket.timeout is TimeoutError
        return NetFailure.TIMEOUT
    if isinstance(x, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return NetFailure.RESET
    if isinstance(x, OSError) and x.errno in _UNREACHABLE_ERRNOS:
        return NetFailure.UNREACHABLE
    if isinstance(x, OSError):
        return NetFailure.FAILED
    return None


def classify(
    e: BaseException, library: Mapping[type[BaseException], NetFailure] | None = None
) -> NetFailure | None:
    """The failure ``e`` shows (None: not a network failure). ``library`` maps a library's types to kinds."""
    found: set[NetFailure] = set()
    for x in causes(e):
        found.update(kind for cls, kind in (library or {}).items() if isinstance(x, cls))
        own = _own_kind(x)
        if own is not None:
            found.add(own)
    return min(found, key=_ORDER.index) if found else None


def tls_reason(e: BaseException) -> str:
    """Why a TLS check failed, from OpenSSL's verify code when there is one."""
    for x in causes(e):
        if isinstance(x, ssl.SSLCertVerificationError):
            code = getattr(x, "verify_code", None)
            if code == _CERT_EXPIRED:
                return "the certificate has expired (or the device clock is wrong)"
            if code == _CERT_NOT_YET_VALID:
                return "the certificate is not valid yet (is the device clock wrong?)"
            if code == _HOSTNAME_MISMATCH:
                return "the certificate does not match the host name"
            return "certificate verify failed"
    return "handshake failed"


def describe(kind: NetFailure, e: BaseException, *, host: str, what: str, timeout_s: float, timeout_key: str) -> str:
    """One line: what failed (``host``, while ``what``) and what to do."""
    if kind is NetFailure.TLS:
        return (
            f"TLS check of {host} failed ({tls_reason(e)}) while {what}; check the device clock, and if a proxy "
            "inspects TLS set agent.ca_bundle to its CA certificate"
        )
    lines = {
        NetFailure.PROXY: f"the HTTP(S) proxy failed while {what}; check HTTPS_PROXY/HTTP_PROXY and NO_PROXY",
        NetFailure.DNS: f"cannot resolve {host} (DNS) while {what}; check the network connection and DNS, "
        "and agent.region / agent.base_url",
        NetFailure.REFUSED: f"connection to {host} refused while {what}; check the network (or that the server runs)",
        NetFailure.CONNECT_TIMEOUT: f"connecting to {host} timed out after {timeout_s:g} s while {what}; "
        "check the network",
        NetFailure.TIMEOUT: f"{host} did not answer within {timeout_s:g} s while {what} ({timeout_key}); "
        "check the network",
        NetFailure.RESET: f"connection to {host} reset while {what}; check the network",
        NetFailure.UNREACHABLE: f"connection to {host} failed (network unreachable) while {what}; check the network",
        NetFailure.FAILED: f"connection to {host} failed while {what}; check the network",
    }
    return lines[kind]



def explain(
    kind: NetFailure, e: BaseException, *, host: str, what: str, timeout_s: float, timeout_key: str
) -> tuple[str, str]:
    """:func:`describe`'s line in its two parts, (what failed, what to do): for a report with a column each."""
    line = describe(kind, e, host=host, what=what, timeout_s=timeout_s, timeout_key=timeout_key)
    failed, _, advice = line.partition("; ")  # every line is "what failed; what to do"
    return failed, advice
