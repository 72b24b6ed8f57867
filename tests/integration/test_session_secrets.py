"""The API key, broker tokens and signed-URL signatures never reach a log line or an error.

Every library that could print them logs at DEBUG into a handler with the
project's RedactingFilter — the session's and REST client's own loggers,
websocket-client (``websocket``, even with its trace mode switched on for the
test: it dumps the handshake, which carries the signed URL), requests and
urllib3 — while conversations succeed and fail in every way that touches a
secret. Error texts (SessionEnded, AgentHttpError) are collected as well.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
import websocket

from device.core.protocol import Connected
from device.drivers.agent_http import AgentHttp, AgentHttpError, SignedUrlSource
from device.drivers.secrets import RedactingFilter, Secret
from device.emulator.scenario import Fault
from tests.integration.sessionrig import WAIT_S, agent_for, fast_scenario, make_session, running, started
from tests.support import FixedUrl

pytestmark = pytest.mark.realtime

KEY = "sk_live_secret_key_7f3a9c1b2d"
DEVICE_TOKEN = "brk_device_token_5e8d2a41"
WATCHED = (
    "device.drivers.session", "device.drivers.agent_http", "device.drivers.tools", "device.core.protocol", "websocket",
    "urllib3", "requests",
)
SIGNATURE_RE = re.compile(r"~[0-9a-f]{40}")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.stream = io.StringIO()
        self.addFilter(RedactingFilter())
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(WATCHED):
            self.records += 1
            self.stream.write(self.format(record) + "\n")


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    old_levels = {name: logging.getLogger(name).level for name in WATCHED}
    root.addHandler(handler)
    for name in WATCHED:
        logging.getLogger(name).setLevel(logging.DEBUG)
    websocket.enableTrace(True, handler=handler)
    try:
        yield handler
    finally:
        websocket.enableTrace(False)
        root.removeHandler(handler)
        for name, level in old_levels.items():
            logging.getLogger(name).setLevel(level)


def test_no_secret_in_any_log_line_or_error(captured: Capture) -> None:
    texts: list[str] = []
    with running(fast_scenario(), api_key=KEY) as emu:
        # 1. a conversation over a fetched signed URL (handshake dumped by the trace)
        session, events = make_session(emu, key=KEY)
        with started(session):
            events.wait_for(Connected)
        texts += [events.ended().message, repr(session.stats)]

        # 2. a prefetched signed URL, and the cache's own logs
        agent = agent_for(emu)
        source = SignedUrlSource(AgentHttp(agent, Secret(KEY, "test")))
        source.start()
        try:
            assert source.wait_ready(WAIT_S)
            session, events = make_session(emu, key=KEY, signed_urls=source)
            with started(session):
                events.wait_for(Connected)
            texts.append(events.ended().message)
        finally:
            source.close()

        # 3. a rejected key: the error names the failure, never the key
        session, events = make_session(emu, key=KEY + "_wrong")
        with started(session):
            texts.append(events.ended().message)
        try:
            AgentHttp(agent, Secret(KEY + "_wrong", "test")).fetch_signed_url()
        except AgentHttpError as e:
            texts += [str(e), repr(e)]

    # 4. an expired signed URL refused after the upgrade, and a refused upgrade (HTTP 403)
    for scenario in (fast_scenario(), fast_scenario(faults=(Fault(kind="refuse_upgrade", status=403),))):
        with running(scenario, api_key=KEY) as emu:
            session, events = make_session(emu, key=KEY, signed_urls=FixedUrl(emu.signed_url(ttl_s=-1)))  # type: ignore[arg-type]
            with started(session):
                texts.append(events.ended().message)

    # 5. broker mode with a device token the broker refuses (the emulator plays a broker that says 401)
    with running(fast_scenario(), api_key=KEY) as emu:
        broker = agent_for(emu, connection="broker", broker_url=f"{emu.base_url}/v1/convai/conversation/get-signed-url")
        session, events = make_session(emu, agent=broker, key=DEVICE_TOKEN)
        with started(session):
            texts.append(events.ended().message)

    log_text = captured.stream.getvalue()
    everything = log_text + "\n".join(texts)
    assert captured.records > 20, "the libraries did log (the test must see their lines)"
    assert "conversation_signature=<redacted>" in log_text, "the trace dumped the handshake (redacted)"
    for secret in (KEY, DEVICE_TOKEN):
        assert secret not in everything
    assert not SIGNATURE_RE.search(everything), SIGNATURE_RE.search(everything)
    assert not re.search(r"conversation_signature=(?!<redacted>)", everything)


USERINFO_TOKEN = "tok_userinfo_4b1d9e77c2"


def with_userinfo(url: str) -> str:
    """``ws://host/...`` → ``ws://kiosk:TOKEN@host/...``: a signed URL carrying its token as userinfo."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://kiosk:{USERINFO_TOKEN}@{rest}"


def test_a_token_in_the_signed_urls_userinfo_never_reaches_a_log_line_or_an_error(
    caplog: pytest.LogCaptureFixture, captured: Capture
) -> None:
    # caplog's handler has no RedactingFilter: it shows what the code itself puts into log lines.
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    hosts: list[str] = []
    for refused in (False, True):
        scenario = fast_scenario(faults=(Fault(kind="refuse_upgrade", status=503),) if refused else ())
        with running(scenario, api_key=KEY) as emu:
            url = with_userinfo(emu.signed_url())
            session, events = make_session(emu, key=KEY, signed_urls=FixedUrl(url))  # type: ignore[arg-type]
            with started(session):
                if refused:
                    events.ended()  # the refusal names the host
                else:
                    events.wait_for(Connected)  # userinfo does not stop the conversation
            ended = events.ended()
            texts += [ended.message, repr(ended)]
            hosts.append(emu.base_url.split("://", 1)[1])
    assert USERINFO_TOKEN not in caplog.text
    assert USERINFO_TOKEN not in "\n".join(texts)
    assert USERINFO_TOKEN not in captured.stream.getvalue()  # websocket-client's trace included
    # the host is still named, without the userinfo
    assert all(f"opening the conversation with {host}" in caplog.text for host in hosts)
    assert f"{hosts[1]} refused the conversation socket (HTTP 503)" in texts[2]


def test_the_redacting_filter_hides_url_userinfo_in_messages_arguments_and_tracebacks() -> None:
    handler = Capture()
    logger = logging.getLogger("device.drivers.session.userinfo-test")
    logger.addHandler(handler)
    url = f"wss://kiosk:{USERINFO_TOKEN}@api.example.com/v1/convai/conversation?agent_id=a1"
    try:
        logger.warning("connecting to %s", url)
        logger.warning(f"plain {url}")
        try:
            raise ConnectionError(f"cannot open {url}")
        except ConnectionError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = handler.stream.getvalue()
    assert USERINFO_TOKEN not in text
    assert text.count("wss://<redacted>@api.example.com/v1/convai/conversation?agent_id=a1") == 3
