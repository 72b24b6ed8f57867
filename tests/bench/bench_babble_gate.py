"""The voice gate in a hall: does it close after the user's last word in four-talker babble?

Turns: one kiosk sentence (ten voices of espeak-ng, flite and festival, tests/wakematerial.py),
preceded by 1 s and followed by 4 s of babble at the SNR given (babble = four synthesized
talkers at once, relative to the sentence's speech level), fed in 250 ms capture blocks through
noise suppression / automatic gain (drivers/dsp.py, as the daemon runs them) into the real gate
(core/gate.py, voice mode, webrtcvad as configured). Per configuration: the share of turns whose
gate closed (turn_ended) within 1.5 s of the sentence's end, and the share of the pause blocks
(from the end + hang-over on) the gate passed to the agent.

Run: ``.venv/bin/python tests/bench/bench_babble_gate.py [--snr 10] [--turns 20]``
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device.core.config import GateConfig  # noqa: E402
from device.core.gate import Gate  # noqa: E402
from device.drivers import dsp  # noqa: E402
from device.drivers.vad import WebrtcVad  # noqa: E402
from tests import wakematerial as m  # noqa: E402

BLOCK = 4000  # samples: the daemon's 250 ms capture block
CLOSE_WITHIN_S = 1.5


def turn_audio(i: int, snr_db: float | None, kind: str = "babble") -> tuple[np.ndarray, float]:
    """(audio, where the sentence ends in seconds): 1 s, the sentence, 4 s, babble under all of it."""
    voice = m.VOICES[i % len(m.VOICES)]
    s = m.speak(voice, m.SENTENCES[i % len(m.SENTENCES)]) * 0.5
    lead, tail = np.zeros(m.RATE_HZ, np.float32), np.zeros(4 * m.RATE_HZ, np.float32)
    x = np.concatenate([lead, s, tail])
    nz = np.nonzero(np.abs(s) > 0.01)[0]
    end_s = 1.0 + (nz[-1] + 1) / m.RATE_HZ if len(nz) else 1.0 + len(s) / m.RATE_HZ
    if snr_db is not None:
        noise = m.babble() if kind == "babble" else m.pink(20 * m.RATE_HZ, 11)
        level = m.rms(s[np.abs(s) > 0.01])
        idx = (i * 40_000 + np.arange(len(x))) % len(noise)
        x = x + noise[idx] * level / 10 ** (snr_db / 20)
    return x, end_s


def run_turn(x: np.ndarray, end_s: float, ns: int, agc: int,
             cfg: GateConfig) -> tuple[float | None, float, float]:
    """(seconds from the sentence's end to turn_ended or None, share of pause blocks passed,
    share of the sentence's blocks passed: how much of the user the agent heard)."""
    gate = Gate(cfg, WebrtcVad(cfg.vad_aggressiveness))
    proc = dsp.make(ns, agc)
    pcm = m.to_pcm(x)
    n = len(pcm) // 2 // BLOCK
    closed_at: float | None = None
    pause_open = pause_blocks = 0
    said_open = said_blocks = 0
    for k in range(n):
        block = pcm[2 * k * BLOCK : 2 * (k + 1) * BLOCK]
        if proc is not None:
            block = proc.process(block)
        t = (k + 1) * BLOCK / m.RATE_HZ
        out = gate.process(block, t, k)
        if t > 1.0 and t - BLOCK / m.RATE_HZ < end_s:
            said_blocks += 1
            said_open += out.open
        if out.turn_ended and closed_at is None and t > end_s:
            closed_at = t - end_s
        if t - BLOCK / m.RATE_HZ >= end_s + cfg.hangover_ms / 1000:
            pause_blocks += 1
            pause_open += out.open
    return closed_at, pause_open / max(1, pause_blocks), said_open / max(1, said_blocks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--snr", type=float, default=10.0)
    p.add_argument("--noise", choices=("babble", "pink"), default="babble")
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--margins", default="0,6,9,12", help="gate.speech_margin_db values to try")
    args = p.parse_args(argv)
    base = GateConfig(mode="voice")
    print(f"{args.turns} turns; gate voice, webrtcvad {base.vad_aggressiveness}, hang-over {base.hangover_ms} ms")
    print("input        margin  NS  AGC  closed ≤1.5 s  median close s  pause blocks passed  speech passed")
    for label, snr in (("clean", None), (f"{args.noise} {args.snr:g} dB", args.snr)):
        turns = [turn_audio(i, snr, args.noise) for i in range(args.turns)]
        for margin in (float(x) for x in args.margins.split(",")):
            cfg = dataclasses.replace(base, speech_margin_db=margin)
            for ns, agc in ((0, 0), (2, 0), (2, 3), (3, 3)):
                res = [run_turn(x, e, ns, agc, cfg) for x, e in turns]
                closes = [c for c, _, _ in res if c is not None]
                ok = sum(c <= CLOSE_WITHIN_S for c in closes)
                med = float(np.median(closes)) if closes else float("nan")
                passed = float(np.mean([q for _, q, _ in res]))
                said = float(np.mean([q for _, _, q in res]))
                print(f"{label:12} {margin:6g}  {ns:2d}  {agc:3d}  {ok:3d}/{len(res)} {ok / len(res):5.0%}  "
                      f"{med:14.2f}  {passed:19.0%}  {said:13.0%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
