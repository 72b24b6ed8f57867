"""Full duplex on the bench's echoing room: does the agent interrupt itself, and is the visitor heard?

    python tests/bench/bench_duplex.py [--runs 3] [--seconds 20] [--echo-db -6] [--delay-ms 120]

Each run: the daemon on the clocked card with the echoing room (device/bench/room.py), gate
always_open, barge_in voice, the emulator's agent (espeak-ng) starting a long reply at once.
Runs without a visitor count the agent's interruptions (each one is the kiosk's own voice
heard as the visitor's); runs with a visitor ("Excuse me, where is the nearest exit?" 4 s in,
at the echo's level) measure when the agent was interrupted from the moment the visitor began,
and whether the question was transcribed. Both with echo cancellation on and off. Prints one
line per run and a summary; figures go to docs/duplex.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from device.bench.clockedcard import ClockedCard  # noqa: E402
from device.bench.room import EchoRoom  # noqa: E402
from device.drivers import filedevices  # noqa: E402
from tests.integration.test_duplex import QUESTION_TEXT, duplex_rig, question_at  # noqa: E402


def one_run(card: ClockedCard, tmp: Path, echo_cancellation: str, visitor: bool, seconds: float,
            echo_db: float, delay_ms: float) -> dict[str, object]:
    with EchoRoom(card, echo_db=echo_db, delay_ms=delay_ms), duplex_rig(tmp, card, echo_cancellation) as rig:
        rig.d.command("start")
        speaking = rig.wait_state("speaking")
        said_at_s = None
        if visitor:
            time.sleep(4.0)
            said_at_s = card.say_in_room(question_at(-26.0))
            time.sleep(seconds - 4.0)
        else:
            time.sleep(seconds)
        counters = rig.d.status().counters
        rig.d.command("stop")
        record = rig.emu.wait_for_conversation_end(timeout_s=30.0)
    t0 = speaking.t_s
    cuts = [r.t_s for r in rig.tel.of("interruption")]
    out: dict[str, object] = {
        "aec": echo_cancellation, "visitor": visitor, "echo_reduction_db": counters.get("echo_reduction_db"),
        "echo_delay_ms": counters.get("echo_delay_ms"),
    }
    if said_at_s is None:
        out["self_interruptions"] = len(cuts)
        out["first_s"] = round(cuts[0] - t0, 2) if cuts else None
    else:
        before = [c for c in cuts if c < said_at_s]
        after = [c for c in cuts if c >= said_at_s]
        out["self_interruptions"] = len(before)
        out["reaction_s"] = round(after[0] - said_at_s, 2) if after else None
        out["heard"] = QUESTION_TEXT in [t.user_transcript for t in record.turns if t.trigger == "speech"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--echo-db", type=float, default=-6.0)
    p.add_argument("--delay-ms", type=float, default=120.0)
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="va-duplex-") as d:
        base = Path(d)
        filedevices.install(base / "alsa")
        for aec in ("off", "on"):
            for visitor in (False, True):
                for i in range(a.runs):
                    with ClockedCard.start(base / f"c{aec}{int(visitor)}{i}") as card:
                        r = one_run(card, base / f"r{aec}{int(visitor)}{i}", aec, visitor, a.seconds, a.echo_db,
                                    a.delay_ms)
                    print(r, flush=True)
                    results.append(r)
    for aec in ("off", "on"):
        quiet = [r for r in results if r["aec"] == aec and not r["visitor"]]
        asked = [r for r in results if r["aec"] == aec and r["visitor"]]
        total_s = a.seconds * len(quiet)
        self_cuts = sum(int(r["self_interruptions"]) for r in quiet)  # type: ignore[call-overload]
        reactions = [float(r["reaction_s"]) for r in asked if r.get("reaction_s") is not None]  # type: ignore[arg-type]
        heard = sum(1 for r in asked if r.get("heard"))
        print(f"echo cancellation {aec}: {self_cuts} self-interruptions in {total_s:.0f} s with nobody talking; "
              f"visitor heard {heard}/{len(asked)}, interrupted "
              f"{statistics.median(reactions) if reactions else float('nan'):.2f} s (median) after they began")
    return 0


if __name__ == "__main__":
    sys.exit(main())
