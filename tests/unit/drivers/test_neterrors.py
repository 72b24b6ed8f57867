"""The one network-error classifier, on the exception chains requests and websocket-client really raise."""

from __future__ import annotations

import errno
import http.client
import socket
import ssl

import pytest
import requests
import urllib3
import websocket

from device.drivers.neterrors import NetFailure, causes, classify, describe, explain, tls_reason


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as caught:
        return caught


def verify_error(code: int) -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(1, "certificate verify failed")
    e.verify_code = code
    return e


def test_the_wrapped_socket_error_decides() -> None:
    # urllib3 2: NewConnectionError from the socket error, inside MaxRetryError (reason), inside ConnectionError (args)
    def requests_error(inner: OSError) -> BaseException:
        new = chained(urllib3.exceptions.NewConnectionError(None, "failed"), inner)
        return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", new))

    assert classify(requests_error(socket.gaierror(-2, "Name or service not known"))) is NetFailure.DNS
    assert classify(requests_error(ConnectionRefusedError(111, "refused"))) is NetFailure.REFUSED
    assert classify(requests_error(ConnectionResetError(104, "reset"))) is NetFailure.RESET
    assert classify(requests_error(OSError(errno.ENETUNREACH, "unreachable"))) is NetFailure.UNREACHABLE
    assert classify(requests_error(OSError(errno.EACCES, "denied"))) is NetFailure.FAILED


def test_no_class_name_or_message_text_is_matched() -> None:
    class NameResolutionError(Exception):  # the name of urllib3's class, but not a socket error
        pass

    assert classify(NameResolutionError("temporary failure in name resolution; connection refused")) is None


def test_the_library_map_adds_a_library_own_types_and_the_earlier_kind_wins() -> None:
    proxy_dns = chained(websocket.WebSocketProxyException("proxy"), socket.gaierror(-2, "no"))
    assert classify(proxy_dns) is NetFailure.DNS
    assert classify(proxy_dns, {websocket.WebSocketProxyException: NetFailure.PROXY}) is NetFailure.PROXY
    timeout = chained(requests.exceptions.ConnectTimeout("t"), TimeoutError("timed out"))
    assert classify(timeout) is NetFailure.TIMEOUT
    assert classify(timeout, {requests.exceptions.ConnectTimeout: NetFailure.CONNECT_TIMEOUT}) is (
        NetFailure.CONNECT_TIMEOUT
    )


def test_tls_wins_and_names_the_reason_from_the_verify_code() -> None:
    e = chained(ConnectionResetError(104, "reset"), verify_error(10))
    assert classify(e) is NetFailure.TLS
    assert tls_reason(e) == "the certificate has expired (or the device clock is wrong)"
    assert tls_reason(verify_error(62)) == "the certificate does not match the host name"
    assert tls_reason(verify_error(20)) == "certificate verify failed"
    assert tls_reason(ssl.SSLError(1, "wrong version number")) == "handshake failed"


def test_causes_survive_cycles_and_stop() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert causes(a) == [a, b]


@pytest.mark.parametrize("kind", list(NetFailure))
def test_every_kind_has_a_line_naming_the_host_and_the_step(kind: NetFailure) -> None:
    line = describe(kind, OSError(), host="agent.example", what="opening the conversation", timeout_s=5,
                    timeout_key="agent.connect_timeout_s")
    assert "while opening the conversation" in line
    assert "; " in line  # what happened; what to do
    assert kind is NetFailure.PROXY or "agent.example" in line


@pytest.mark.parametrize("kind", list(NetFailure))
def test_explain_splits_the_line_into_what_failed_and_what_to_do(kind: NetFailure) -> None:
    e = OSError()
    failed, advice = explain(kind, e, host="agent.example", what="connecting", timeout_s=5.0, timeout_key="k")
    assert failed
    assert advice.startswith("check ")
    assert f"{failed}; {advice}" == describe(kind, e, host="agent.example", what="connecting", timeout_s=5.0,
                                             timeout_key="k")


def test_the_rest_side_decides_on_types_not_on_class_names_or_text() -> None:
    from device.drivers.agent_http import classify_request_error

    class NameResolutionError(Exception):  # a look-alike: not a DNS failure
        pass

    e = http.client.HTTPException(NameResolutionError("temporary failure in name resolution"))
    assert "cannot resolve" not in str(classify_request_error(e, "fetching", "h.example", 1.0))
    reset = http.client.HTTPException(ConnectionResetError(104, "the peer refused to go on"))
    assert "connection to h.example reset" in str(classify_request_error(reset, "fetching", "h.example", 1.0))
