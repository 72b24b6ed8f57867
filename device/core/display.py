"""What the LEDs and the status show: the display states, defined once.

The controller shows one of :data:`STATES` (its own state, except that a
conversation the wake word started shows ``woken`` while it connects, a muted
microphone ``muted`` and a missing audio device ``error``). LED patterns exist
per display state; the status file and the Prometheus gauge name them too,
with :data:`STARTING` and :data:`STOPPED`, which only the daemon shows.
"""

from __future__ import annotations

IDLE = "idle"
WOKEN = "woken"  # the wake word was heard and the conversation is connecting (gate.mode = "wake_word")
CONNECTING = "connecting"
LISTENING = "listening"
THINKING = "thinking"
SPEAKING = "speaking"
ERROR = "error"
MUTED = "muted"

# Every state the controller shows, in the order the documentation and the gauge list them.
STATES = (IDLE, WOKEN, CONNECTING, LISTENING, THINKING, SPEAKING, ERROR, MUTED)
# Shown by the daemon until the microphone has delivered its first block (not a state of the controller).
STARTING = "starting"
# Only in the Prometheus textfile: what a clean stop leaves behind (with voice_appliance_up 0).
STOPPED = "stopped"
