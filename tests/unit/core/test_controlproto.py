"""The control socket's line protocol without a socket: requests, answers, line framing."""

from __future__ import annotations

import pytest

from device.core import controlproto
from device.core.controlproto import (
    COMMANDS,
    LINE_TOO_LONG_ANSWER,
    MAX_LINE_BYTES,
    NEEDS_TEXT,
    LineBuffer,
    LineTooLong,
    Request,
    encode,
    parse,
    parse_answer,
    reply_answer,
    status_answer,
)

ALL = "start, stop, press, release, mute, unmute, context, message, status, help"

# -- requests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in COMMANDS if n not in NEEDS_TEXT])
def test_a_command_without_text_is_a_request(name: str) -> None:
    assert parse(name) == Request(name, "")


@pytest.mark.parametrize("name", NEEDS_TEXT)
def test_a_command_with_text_is_a_request_carrying_it(name: str) -> None:
    assert parse(f"{name} The shop closes at six") == Request(name, "The shop closes at six")


def test_the_command_name_is_case_insensitive() -> None:
    assert parse("PrEsS") == Request("press")


def test_the_text_keeps_its_case_and_inner_spaces() -> None:
    assert parse("  message   Hello  THERE \t") == Request("message", "Hello  THERE")


def test_a_crlf_line_end_is_accepted() -> None:
    assert parse("status\r") == Request("status")


@pytest.mark.parametrize("line", ["", "   ", "\t\r"])
def test_an_empty_line_lists_the_commands(line: str) -> None:
    assert parse(line) == f"error empty command; send one of: {ALL}"


def test_an_unknown_command_is_named_and_the_commands_listed() -> None:
    assert parse("Dance now") == f"error unknown command 'dance'; send one of: {ALL}"


@pytest.mark.parametrize("line", ["context", "message   ", "CONTEXT \t"])
def test_a_command_that_needs_text_says_how_to_send_it(line: str) -> None:
    name = line.split()[0].lower()
    assert parse(line) == f"error {name} needs text: {name} TEXT"


@pytest.mark.parametrize("name", [n for n in COMMANDS if n not in NEEDS_TEXT])
def test_a_command_that_takes_no_text_refuses_it(name: str) -> None:
    assert parse(f"{name} hard") == f"error {name} takes no arguments"


# -- answers ----------------------------------------------------------------------------------------


def test_help_lists_every_command_with_what_it_does() -> None:
    assert controlproto.HELP_ANSWER == (
        "ok start: start a conversation; stop: end the conversation; press: press the button (on-screen "
        "push-to-talk); release: release the button; mute: force the microphone off; unmute: let the microphone "
        "on again; context: context TEXT: background information for the agent; message: message TEXT: text the "
        "agent treats as the user's words; status: the daemon's status as JSON; help: this list"
    )


def test_status_is_one_line_of_compact_json() -> None:
    assert status_answer({"state": "idle", "counters": {"n": 1}}) == 'ok {"state":"idle","counters":{"n":1}}'


def test_a_controller_reply_becomes_ok_or_error_with_its_text() -> None:
    assert (reply_answer(True, "connecting"), reply_answer(False, "no conversation")) == (
        "ok connecting",
        "error no conversation",
    )


def test_the_fixed_answers_say_what_to_do() -> None:
    assert controlproto.BUSY_ANSWER == "error the daemon is busy; try again"
    assert controlproto.REPLY_TIMEOUT_ANSWER == (
        "error the daemon did not answer in time; see `journalctl -u voice-appliance`"
    )
    assert LINE_TOO_LONG_ANSWER == "error line longer than 4096 bytes; send shorter lines"


def test_an_answer_is_sent_as_utf8_and_a_newline() -> None:
    assert encode("ok Grüße") == b"ok Gr\xc3\xbc\xc3\x9fe\n"


@pytest.mark.parametrize(
    ("line", "parsed"),
    [("ok", (True, "")), ("ok idle", (True, "idle")), ("error no such thing", (False, "no such thing"))],
)
def test_an_answer_line_reads_back_as_ok_and_text(line: str, parsed: tuple[bool, str]) -> None:
    assert parse_answer(line) == parsed


@pytest.mark.parametrize("line", ["", "OK", "okay fine", "HTTP/1.1 400 Bad Request"])
def test_a_line_that_is_no_answer_is_not_read_as_one(line: str) -> None:
    assert parse_answer(line) is None


def test_every_answer_the_server_makes_reads_back() -> None:
    answers = [controlproto.OK, controlproto.HELP_ANSWER, status_answer({}), reply_answer(True, "idle"),
               controlproto.BUSY_ANSWER, controlproto.REPLY_TIMEOUT_ANSWER, LINE_TOO_LONG_ANSWER, parse("x")]
    assert all(isinstance(a, str) and parse_answer(a) is not None for a in answers)


# -- line framing -----------------------------------------------------------------------------------


def test_no_line_until_its_newline_arrives() -> None:
    buf = LineBuffer()
    buf.feed(b"pre")
    assert buf.pop() is None
    buf.feed(b"ss\nrel")
    assert buf.pop() == "press"
    assert buf.pop() is None


def test_pipelined_lines_come_out_in_order() -> None:
    buf = LineBuffer()
    buf.feed(b"press\nrelease\nhelp\n")
    assert [buf.pop(), buf.pop(), buf.pop(), buf.pop()] == ["press", "release", "help", None]


def test_bad_utf8_is_replaced_not_refused() -> None:
    buf = LineBuffer()
    buf.feed(b"message caf\xe9\n")
    assert buf.pop() == "message caf\ufffd"


def test_a_line_of_exactly_the_limit_is_taken() -> None:
    buf = LineBuffer()
    buf.feed(b"x" * MAX_LINE_BYTES + b"\n")
    assert buf.pop() == "x" * MAX_LINE_BYTES


def test_a_complete_line_over_the_limit_is_refused_and_consumed() -> None:
    buf = LineBuffer()
    buf.feed(b"context " + b"x" * MAX_LINE_BYTES + b"\npress\n")
    with pytest.raises(LineTooLong):
        buf.pop()
    assert buf.pop() == "press"


def test_an_unfinished_line_over_the_limit_is_overlong() -> None:
    buf = LineBuffer()
    buf.feed(b"x" * (MAX_LINE_BYTES + 1))
    assert buf.overlong


def test_an_unfinished_line_at_the_limit_is_not_yet_overlong() -> None:
    buf = LineBuffer()
    buf.feed(b"x" * MAX_LINE_BYTES)
    assert not buf.overlong


def test_complete_lines_waiting_their_turn_are_not_overlong() -> None:
    buf = LineBuffer()
    buf.feed(b"help\n" * 1000)
    assert not buf.overlong


def test_clear_drops_what_was_buffered() -> None:
    buf = LineBuffer()
    buf.feed(b"press\npartial")
    buf.clear()
    assert buf.pop() is None and not buf.overlong
