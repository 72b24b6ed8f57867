"""Benchmark of the hands-free features: wake-word detection rates, false accepts, CPU; noise suppression.

All material is made on the spot (espeak-ng voices and speeds, sox noise), nothing is committed:

- detection rate per engine and bundled model over 40 positives (10 voices x 2 speeds x clean / pink
  noise at 10 dB SNR), each clip fed to a fresh detector in 250 ms capture blocks;
- false accepts per hour over >= 10 minutes of other speech (the same voices, sentences that are not a
  wake word) half of it in pink noise, followed by white and pink noise alone;
- CPU seconds per minute of audio of each detector (process time while it scores that stream) and of
  noise suppression / automatic gain; and of the whole daemon idling for ``--idle-s`` with the
  detector on (each engine) and off (push_to_talk: idle blocks are dropped unprocessed);
- barge-in by wake word: false triggers on >= 5 minutes of the agent's own voice (the emulator's espeak
  voice) through an echo path (reverb, low-pass, -10 dB, room noise), as with no echo cancellation;
- noise suppression: SNR of what is sent before/after at 0/5/10 dB input SNR (white, pink noise), and
  webrtcvad agreement with the clean reference.

Run: ``.venv/bin/python tests/bench/bench_wake.py [--idle-s 60] [--false-min 10]``
or ``.venv/bin/python -m pytest tests/bench/bench_wake.py -s``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device.core.config import AgentConfig, AudioConfig, Config, GateConfig, SystemdConfig, WakeConfig  # noqa: E402
from device.drivers import dsp, filedevices  # noqa: E402
from device.drivers.wake import WakeDetector  # noqa: E402
from tests import speechgen as g  # noqa: E402

VOICES = ("en-us", "en-gb", "en-us+m3", "en-us+f3", "en-gb+m1", "en-us+f2", "en-gb-x-rp", "en-us+m7", "en-029",
          "en-gb-scotland")
SPEEDS = (140, 175)
MODELS = {
    "microwakeword": ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft"),
    "openwakeword": ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft", "hey_rhasspy"),
}
PHRASE = {"okay_nabu": "okay nabu", "hey_jarvis": "hey jarvis", "alexa": "alexa", "hey_mycroft": "hey mycroft",
          "hey_rhasspy": "hey rhasspy"}
SENTENCES = (
    "when does the museum open on sunday",
    "where can I buy a ticket for the exhibition",
    "is there a cafe on the second floor",
    "how long does the guided tour take",
    "can I bring my dog inside the building",
    "what time does the last bus leave",
    "I would like to see the dinosaurs please",
    "hello there, is anybody working here today",
    "thank you very much, that was helpful",
    "are children allowed in without an adult",
    "hey there, which way is the exit",
    "my name is jarrod and I am looking for my friend",
    "could you tell me about the special offers",
    "I think the lift is out of order again",
    "okay, now let me think about that for a moment",
)


def feed(det: WakeDetector, pcm: bytes) -> int:
    hits = 0
    for i, block in enumerate(g.blocks(pcm)):
        hits += det.process(block, (i + 1) * 0.25) is not None
    return hits


def detection_rate(engine: str, model: str) -> tuple[int, int]:
    noise = g.noise("pinknoise", 10.0)
    heard = total = 0
    for voice in VOICES:
        for speed in SPEEDS:
            spoken = g.speak(PHRASE[model], voice, speed)
            for pcm in (spoken, g.mix(spoken, noise, 10.0)):
                det = WakeDetector(WakeConfig(engine=engine, model=model))  # type: ignore[arg-type]
                try:
                    heard += feed(det, g.silence(0.5) + pcm + g.silence(1.0)) > 0
                finally:
                    det.close()
                total += 1
    return heard, total


def other_speech(minutes: float) -> bytes:
    """At least ``minutes`` of non-wake speech (half in pink noise at 10 dB), then 1 min of noise alone."""
    parts: list[bytes] = []
    length = 0
    i = 0
    noise = g.noise("pinknoise", 10.0)
    while length < minutes * 60 * 2 * g.RATE_HZ:
        voice = VOICES[i % len(VOICES)]
        clip = g.speak(SENTENCES[i % len(SENTENCES)], voice, SPEEDS[(i // len(VOICES)) % 2])
        clip = g.silence(0.3) + clip
        if i % 2:
            clip = g.mix(clip, noise, 10.0)
        parts.append(clip)
        length += len(clip)
        i += 1
    parts += [g.noise("whitenoise", 30.0), g.noise("pinknoise", 30.0)]
    return b"".join(parts)


def false_accepts(engine: str, model: str, stream: bytes) -> tuple[int, float]:
    """Detections in ``stream`` and the detector's CPU seconds per minute of audio."""
    det = WakeDetector(WakeConfig(engine=engine, model=model))  # type: ignore[arg-type]
    try:
        t0 = time.process_time()
        hits = feed(det, stream)
        cpu_s = time.process_time() - t0
    finally:
        det.close()
    minutes = len(stream) / 2 / g.RATE_HZ / 60
    return hits, cpu_s / minutes


AGENT_REPLIES = (
    "Done, volume set to 60%. The museum opens at nine in the morning and closes at six in the evening, "
    "every day except Monday.",
    "Guided tours start every hour from the main hall, the audio guide is free, and the special exhibition "
    "on the first floor is open until the end of the month.",
    "Yes, there is a cafe on the ground floor, next to the gift shop. Enjoy your visit!",
    "I can help with opening hours, tickets, directions and the current exhibitions. What would you like to know?",
    "The nearest bus stop is across the square; buses to the station leave every ten minutes.",
    "Sorry, I did not catch that. Could you say it again?",
)


def agent_echo(minutes: float) -> bytes:
    """The agent's voice (the emulator's: espeak-ng en-us, 175 wpm) as the microphone hears it with no echo
    cancellation: reverberant, band-limited, 10 dB down, over room noise."""
    one = b"".join(g.speak(t, "en-us", 175, "reverb", "50", "lowpass", "4000", "vol", "0.3") + g.silence(0.4)
                   for t in AGENT_REPLIES)
    n = int(minutes * 60 * 2 * g.RATE_HZ / len(one)) + 1
    return g.mix(one * n, g.noise("pinknoise", 10.0), 20.0)


# -- noise suppression ------------------------------------------------------------------------------------


def _vad_frames(pcm: bytes) -> list[bool]:
    import webrtcvad

    vad = webrtcvad.Vad(2)
    return [vad.is_speech(pcm[i:i + 320], g.RATE_HZ) for i in range(0, len(pcm) - 319, 320)]


def babble(seconds: float) -> bytes:
    """Four talkers at once (overlapping espeak-ng sentences in different voices)."""
    from array import array

    n = int(seconds * g.RATE_HZ)
    total = [0] * n
    for k, voice in enumerate(("en-us+m3", "en-gb+f3", "en-us+m7", "en-gb")):
        stream = b"".join(g.speak(SENTENCES[(k * 4 + i) % len(SENTENCES)], voice) for i in range(8))
        samples = array("h", (stream * (2 * n // len(stream) + 2))[2 * k * 3000:2 * k * 3000 + 2 * n])
        for i, x in enumerate(samples):
            total[i] += x // 2
    return array("h", (max(-32768, min(32767, x)) for x in total)).tobytes()


def noise_figures() -> list[str]:
    speech = g.silence(1.0) + g.speak("when does the museum open on sunday, and where can I buy a ticket") \
        + g.silence(1.0)
    lead = 2 * g.RATE_HZ * 2  # bytes: speech starts after 1 s; measure from 0.5 s
    spoken = slice(g.RATE_HZ * 2, len(speech) - g.RATE_HZ * 2)
    clean_vad = _vad_frames(speech)
    lines = []
    for kind in ("whitenoise", "pinknoise", "babble"):
        noise = babble(10.0) if kind == "babble" else g.noise(kind, 10.0)
        for snr in (0, 5, 10):
            noisy = g.mix(speech, noise, snr)
            row = [f"{kind:10} {snr:2d} dB in"]
            for level in (0, 2, 3):
                out = noisy
                if level:
                    proc = dsp.NoiseGain(level, 0)
                    out = b"".join(proc.process(b) for b in g.blocks(noisy))[: len(noisy)]
                p_noise = g.rms(out[lead // 4:lead // 2]) ** 2
                p_speech = max(g.rms(out[spoken]) ** 2 - p_noise, 1e-9)
                snr_out = 10 * math.log10(p_speech / max(p_noise, 1e-9))
                vad = _vad_frames(out)
                agree = sum(a == b for a, b in zip(vad, clean_vad, strict=False)) / len(clean_vad)
                row.append(f"NS {level}: SNR {snr_out:5.1f} dB, VAD agrees {agree:5.1%}")
            lines.append(" | ".join(row))
    # Processing cost: one minute of audio through NS 2 + AGC.
    minute = g.mix(g.silence(1.0) + g.speak(" ".join(SENTENCES[:6])), g.noise("pinknoise", 10.0), 10.0)
    minute = (minute * (60 * 2 * g.RATE_HZ // len(minute) + 1))[: 60 * 2 * g.RATE_HZ]
    proc = dsp.NoiseGain(2, 3)
    t0 = time.process_time()
    for b in g.blocks(minute):
        proc.process(b)
    lines.append(f"NS 2 + AGC 3: {time.process_time() - t0:.2f} CPU s per minute of audio")
    return lines


# -- the daemon idling --------------------------------------------------------------------------------------


def idle_cpu(tmp: Path, gate: GateConfig, wake: WakeConfig, seconds: float, **audio: int) -> float:
    """CPU seconds per minute of the whole daemon process idling (real time, file microphone)."""
    from device.app.daemon import Daemon
    from device.drivers.gpio import mock_factory
    from device.drivers.notify import Notifier

    tmp.mkdir(parents=True, exist_ok=True)
    filedevices.install(tmp / "alsa")
    raw = tmp / "in.raw"
    # Room noise with occasional other speech: what a kiosk hears all day.
    room = g.mix(g.silence(2.0) + g.speak(SENTENCES[0]) + g.silence(6.0), g.noise("pinknoise", 10.0), 15.0)
    raw.write_bytes(room * (int(seconds / (len(room) / 32000)) + 3))
    cfg = Config(
        agent=AgentConfig(agent_id="agent_bench", connection="public", base_url="http://127.0.0.1:9"),
        audio=AudioConfig(
            capture_device=filedevices.capture_device(raw),
            playback_device=filedevices.playback_device(tmp / "out.raw", fixed_16k=True),
            pace_realtime=True, earcons=False, **audio,  # type: ignore[arg-type]
        ),
        gate=gate,
        wake=wake,
        systemd=SystemdConfig(status_file="", control_socket="", watchdog=False),
    )
    d = Daemon(cfg, None, pin_factory=mock_factory(), notifier=Notifier({}))
    d.start()
    try:
        settle = threading.Event()
        settle.wait(2.0)  # let the workers start and the first (slow) capture period pass
        t0, c0 = time.monotonic(), time.process_time()
        threading.Event().wait(seconds)
        return (time.process_time() - c0) / (time.monotonic() - t0) * 60
    finally:
        d.stop()


def machine() -> str:
    return f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle-s", type=float, default=60.0, help="seconds the daemon idles per configuration")
    p.add_argument("--false-min", type=float, default=10.0, help="minutes of other speech for false accepts")
    p.add_argument("--skip", default="", help="comma list of sections to skip: rates,false,echo,noise,idle")
    args = p.parse_args(argv)
    skip = set(args.skip.split(","))
    print(f"machine: {machine()}")
    if "rates" not in skip:
        print("\n== detection rate (40 espeak-ng positives per model: 10 voices x 2 speeds x clean/pink 10 dB)")
        for engine, models in MODELS.items():
            for model in models:
                heard, total = detection_rate(engine, model)
                print(f"{engine:14} {model:12} {heard:2d}/{total} = {heard / total:5.1%}", flush=True)
    if "false" not in skip:
        stream = other_speech(args.false_min)
        minutes = len(stream) / 2 / g.RATE_HZ / 60
        print(f"\n== false accepts over {minutes:.1f} min of other speech and noise; detector CPU")
        for engine, models in MODELS.items():
            for model in models:
                hits, cpu = false_accepts(engine, model, stream)
                print(f"{engine:14} {model:12} {hits:3d} false accepts = {hits / minutes * 60:5.1f}/h; "
                      f"{cpu:.2f} CPU s per minute of audio", flush=True)
    if "echo" not in skip:
        stream = agent_echo(5.0)
        minutes = len(stream) / 2 / g.RATE_HZ / 60
        print(f"\n== barge-in listening: false triggers on {minutes:.1f} min of the agent's own voice (echo)")
        for engine, models in MODELS.items():
            for model in models:
                hits, _ = false_accepts(engine, model, stream)
                print(f"{engine:14} {model:12} {hits:3d} false triggers = {hits / minutes * 60:5.1f}/h", flush=True)
    if "noise" not in skip:
        print("\n== noise suppression (SNR of what is sent; webrtcvad agreement with the clean speech)")
        for line in noise_figures():
            print(line, flush=True)
    if "idle" not in skip:
        print(f"\n== the daemon idling, {args.idle_s:g} s each (CPU s per minute, whole process)")
        with tempfile.TemporaryDirectory() as d:
            runs = [
                ("detector off (push_to_talk)", GateConfig(), WakeConfig(), {}),
                ("microwakeword hey_jarvis", GateConfig(mode="wake_word"), WakeConfig(), {}),
                ("openwakeword hey_jarvis", GateConfig(mode="wake_word"),
                 WakeConfig(engine="openwakeword"), {}),
                ("microwakeword + NS 2 + AGC 3", GateConfig(mode="wake_word"), WakeConfig(),
                 {"noise_suppression": 2, "auto_gain_dbfs": 3}),
            ]
            for i, (name, gate, wake, audio) in enumerate(runs):
                cpu = idle_cpu(Path(d) / str(i), gate, wake, args.idle_s, **audio)
                print(f"{name:30} {cpu:.2f} CPU s per minute", flush=True)
    return 0


def test_bench_wake() -> None:
    assert main(["--idle-s", "20", "--false-min", "10"]) == 0


if __name__ == "__main__":
    raise SystemExit(main())
