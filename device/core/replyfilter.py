"""Which of the agent's audio to play after the device cut a reply short (pure).

The service numbers each reply's audio (``event_id``) and interrupts the agent
itself when it hears the user (an ``interruption`` event). When the device cuts
the reply first — a press or the wake word barging in, the speaking timeout —
the service has not noticed yet and goes on sending that reply. Its later audio
is dropped until the service starts a new turn: an interruption, the user's
final transcript, or audio with a newer id.
"""

from __future__ import annotations

from device.core.machine import Kind

NO_EVENT_ID = -1
# Inputs whose flush cuts the reply on the device only (the service goes on sending it).
LOCAL_CUTS = frozenset({Kind.PRESS, Kind.TIMEOUT, Kind.WAKE_WORD})


class ReplyFilter:
    """Drops the rest of a reply the device cut short; owned by the controller thread."""

    def __init__(self) -> None:
        self._drop_up_to_id = NO_EVENT_ID  # audio with an event_id <= this is the rest of a cut reply
        self._last_id = NO_EVENT_ID

    @property
    def last_id(self) -> int:
        """The event_id of the agent audio played last (``NO_EVENT_ID``: none yet)."""
        return self._last_id

    def admit(self, event_id: int) -> bool:
        """True when audio ``event_id`` is to be played; False: the rest of a reply that was cut."""
        if event_id <= self._drop_up_to_id:
            return False
        self._drop_up_to_id = NO_EVENT_ID
        self._last_id = event_id
        return True

    def flushed(self, cause: Kind) -> bool:
        """The agent's audio was flushed because of ``cause``; True when the device cut the reply."""
        if cause not in LOCAL_CUTS:
            return False
        self._drop_up_to_id = self._last_id
        return True

    def resume(self) -> None:
        """The service started a new turn (or the conversation is over): play what comes."""
        self._drop_up_to_id = NO_EVENT_ID

    def reset(self) -> None:
        """A new conversation: its event ids start afresh."""
        self._drop_up_to_id = NO_EVENT_ID
        self._last_id = NO_EVENT_ID
