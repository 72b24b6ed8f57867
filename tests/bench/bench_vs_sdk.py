"""Side by side: this device vs the official ``elevenlabs`` Python SDK.

One emulator, one scenario (the bench demo's: a question that needs a client
tool, a barge-in while the agent answers, a second answer, the agent hangs
up), one input (the demo's spoken audio). Each client runs in its own process
so its CPU and memory are its own:

- device: ``voice-appliance bench --agent-url …`` — the real daemon over ALSA
  ``type file`` devices, gate always open with voice barge-in (the SDK has no
  button: both stream the microphone all the time);
- SDK: ``elevenlabs.conversational_ai.conversation.Conversation`` with an
  audio interface that behaves like the SDK's ``DefaultAudioInterface`` (one
  queue of whole audio events, a writer thread doing blocking writes,
  ``interrupt()`` empties the queue but never the card) over the same kind of
  loopback files: 4000-frame input callbacks every 250 ms, and a simulated
  card of 2 × 1000 frames (PortAudio's usual buffer for that period size)
  paced in real time.

Figures (median over rounds):

- interruption → silence: ms of the old reply heard after the interruption
  (device: written after the flush, ALSA's buffer dropped; SDK: written after
  ``interrupt()`` plus what the card still held — the SDK never drops it);
- received → played: reply's first audio off the socket → first sample
  written to the card;
- CPU s per conversation minute: CPU from the start of the session to its
  end (imports and interpreter start-up left out), over the conversation's
  length; the SDK: its whole process; the device: the daemon's threads (the
  bench driving it runs in the same process and is left out);
- peak RSS of the client process;
- start-up → first audio sent: process spawn → the emulator receiving the
  first user_audio_chunk;
- replies heard: the emulator reuses the interrupted reply's event id for the
  next reply (as the service does); the SDK drops it (its ``<=`` rule).

Run: ``.venv/bin/python tests/bench/bench_vs_sdk.py [--short] [--rounds N]``
(or ``provisioning/dev.sh bench``). Needs the ``baseline`` extra.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device.drivers.pacing import PlaybackClock  # noqa: E402

RATE_HZ = 16000
IN_BLOCK_FRAMES = 4000  # DefaultAudioInterface.INPUT_FRAMES_PER_BUFFER
OUT_PERIOD_FRAMES = 1000  # DefaultAudioInterface.OUTPUT_FRAMES_PER_BUFFER
SDK_CARD_FRAMES = 2 * OUT_PERIOD_FRAMES
TOOL_RESULT = "volume set to 60%"


# -- the SDK side (runs in its own process) -----------------------------------------


@dataclass
class _Written:
    t_s: float
    frames: int
    generation: int


@dataclass
class LoopbackLog:
    """What the loopback interface saw, for the figures."""

    outputs: list[tuple[float, int, int]] = field(default_factory=list)  # (t, bytes, generation)
    writes: list[_Written] = field(default_factory=list)
    interrupts: list[tuple[float, int, int]] = field(default_factory=list)  # (t, generation before, card delay)
    first_input_s: float | None = None


class LoopbackAudioInterface:
    """``DefaultAudioInterface`` with the sound card replaced by loopback files.

    Same structure as the SDK's: ``start()`` begins input callbacks of 4000
    frames and an output thread; ``output()`` queues each audio event whole;
    the output thread does one blocking write per event; ``interrupt()``
    empties the queue only. The card is a real-time clock with a
    ``SDK_CARD_FRAMES`` buffer; blocking writes wait for room like PortAudio's.
    """

    def __init__(self, input_pcm: bytes, output_path: Path, log: LoopbackLog) -> None:
        self._input = input_pcm
        self._out = output_path.open("wb")
        self.log = log
        self._clock = PlaybackClock(RATE_HZ, SDK_CARD_FRAMES)
        self._generation = 0
        self._lock = threading.Lock()

    # AudioInterface API ------------------------------------------------------
    def start(self, input_callback: Callable[[bytes], None]) -> None:
        self.input_callback = input_callback
        self.output_queue: queue.Queue[tuple[bytes, int]] = queue.Queue()
        self.should_stop = threading.Event()
        self.output_thread = threading.Thread(target=self._output_thread, name="sdk-output")
        self.input_thread = threading.Thread(target=self._input_thread, name="sdk-input")
        self.output_thread.start()
        self.input_thread.start()

    def stop(self) -> None:
        self.should_stop.set()
        for t in (self.output_thread, self.input_thread):
            if t is not threading.current_thread():
                t.join()
        self._out.close()

    def output(self, audio: bytes) -> None:
        with self._lock:
            gen = self._generation
        self.log.outputs.append((time.monotonic(), len(audio), gen))
        self.output_queue.put((audio, gen))

    def interrupt(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.log.interrupts.append((now, self._generation, self._clock.delay_frames(now)))
            self._generation += 1
        try:
            while True:
                self.output_queue.get(block=False)
        except queue.Empty:
            pass

    # the "sound card" ------------------------------------------------------------
    def _blocking_write(self, audio: bytes, gen: int) -> None:
        data = audio[: len(audio) - len(audio) % 2]
        while data and not self.should_stop.is_set():
            now = time.monotonic()
            with self._lock:
                wait_s = self._clock.seconds_until_room(min(len(data) // 2, OUT_PERIOD_FRAMES), now)
                if wait_s <= 0:
                    frames = min(len(data) // 2, self._clock.room_frames(now))
                    self._clock.wrote(frames, now)
            if wait_s > 0:
                self.should_stop.wait(wait_s)
                continue
            self._out.write(data[: 2 * frames])
            self.log.writes.append(_Written(now, frames, gen))
            data = data[2 * frames :]

    def _output_thread(self) -> None:
        while not self.should_stop.is_set():
            try:
                audio, gen = self.output_queue.get(timeout=0.25)
            except queue.Empty:
                continue
            self._blocking_write(audio, gen)

    def _input_thread(self) -> None:
        block = 2 * IN_BLOCK_FRAMES
        start = time.monotonic()
        n = 0
        while not self.should_stop.is_set():
            deadline = start + (n + 1) * IN_BLOCK_FRAMES / RATE_HZ
            if self.should_stop.wait(max(0.0, deadline - time.monotonic())):
                break
            chunk = self._input[n * block : (n + 1) * block]
            chunk += bytes(block - len(chunk))
            if self.log.first_input_s is None:
                self.log.first_input_s = time.monotonic()
            self.input_callback(chunk)
            n += 1


def sdk_figures(log: LoopbackLog) -> dict[str, Any]:
    """Interruption → silence and received → played, from the interface's log."""
    old_ms = []
    for t_i, gen, card_delay in log.interrupts:
        after = sum(w.frames for w in log.writes if w.t_s >= t_i and w.generation <= gen)
        old_ms.append(1000 * (after + card_delay) / RATE_HZ)
    # A reply starts with the first output after a quiet second or after an interruption.
    received_to_played = []
    replies_heard = 0
    last_t: float | None = None
    last_gen = -1
    for t, _n, gen in log.outputs:
        if last_t is None or t - last_t > 1.0 or gen != last_gen:
            first = next((w for w in log.writes if w.t_s >= t and w.generation == gen), None)
            if first is not None:
                received_to_played.append(1000 * (first.t_s - t))
                replies_heard += 1
        last_t, last_gen = t, gen
    return {"old_audio_ms": old_ms, "received_to_played_ms": received_to_played, "replies_heard": replies_heard}


def run_sdk_client(args: argparse.Namespace) -> int:
    """The SDK role: one conversation, then a JSON line of figures on stdout."""
    from elevenlabs.client import ElevenLabs
    from elevenlabs.conversational_ai.conversation import ClientTools, Conversation

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pcm = Path(args.input_raw).read_bytes()
    key = Path(args.api_key_file).read_text().strip()
    log = LoopbackLog()
    audio = LoopbackAudioInterface(pcm, out_dir / "sdk_out.raw", log)
    tools = ClientTools()
    tools.register("set_volume", lambda params: TOOL_RESULT)
    ended = threading.Event()
    conv = Conversation(
        ElevenLabs(api_key=key, base_url=args.base_url),
        args.agent_id,
        requires_auth=True,
        audio_interface=audio,
        client_tools=tools,
        callback_disconnect=lambda details: ended.set(),
    )
    before = resource.getrusage(resource.RUSAGE_SELF)
    conv.start_session()
    if not ended.wait(args.timeout_s):
        conv.end_session()
    conv.wait_for_session_end()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures = sdk_figures(log)
    figures.update(
        cpu_s=(usage.ru_utime + usage.ru_stime) - (before.ru_utime + before.ru_stime),
        peak_rss_mb=usage.ru_maxrss / 1024,
        completed=ended.is_set(),
    )
    print(json.dumps(figures))
    return 0


# -- the harness -----------------------------------------------------------------


@dataclass
class Round:
    client: str
    old_audio_ms: list[float]
    received_to_played_ms: list[float]
    cpu_s: float
    peak_rss_mb: float
    conversation_s: float
    startup_ms: float | None
    replies_heard: int
    ok: bool
    note: str = ""

    @property
    def cpu_per_minute(self) -> float:
        return self.cpu_s / (self.conversation_s / 60) if self.conversation_s > 0 else float("nan")


def _record_figures(emu: Any, index: int, spawn_s: float) -> tuple[float, float | None, list[str]]:
    rec = emu.wait_for_conversation_end(index, timeout_s=60)
    chunks = rec.events_of("user_audio_chunk", "to_agent")
    startup_ms = 1000 * (chunks[0]["t_s"] - spawn_s) if chunks else None
    length_s = (rec.ended_t_s or rec.started_t_s) - rec.started_t_s
    return length_s, startup_ms, [str(v) for v in rec.violations]


def run_device(emu: Any, work: Path, key_file: Path, wav: Path, timeline: Path, index: int) -> Round:
    out = work / f"device-{index}"
    cmd = [
        sys.executable, "-m", "device", "bench", "--log-level", "warning",
        "--agent-url", emu.base_url, "--api-key-file", str(key_file),
        "--set", f"agent.agent_id={emu.agent_id}",
        "--input", str(wav), "--timeline", str(timeline),
        "--gate", "always_open", "--set", "gate.barge_in=voice",
        "--realtime", "--out", str(out), "--no-progress",
        "--card", "file",  # the SDK's side runs on a simulated clockless card too: compare like with like
    ]
    spawn_s = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    try:
        rep = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        raise RuntimeError(
            f"the device bench wrote no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        ) from None
    length_s, startup_ms, violations = _record_figures(emu, index, spawn_s)
    turns = rep["turns"]
    return Round(
        client="device",
        old_audio_ms=[i["old_audio_ms_after"] for i in rep["interruptions"]
                      if i["source"] == "agent" and i["old_audio_ms_after"] is not None],
        received_to_played_ms=[1000 * (t["first_agent_audio_written_s"] - t["first_agent_audio_received_s"])
                               for t in turns if t["first_agent_audio_written_s"] is not None
                               and t["first_agent_audio_received_s"] is not None],
        cpu_s=rep["cpu_s"]["device"],  # the daemon's threads: the bench's own loop is no part of it
        peak_rss_mb=rep["peak_rss_mb"],
        conversation_s=length_s,
        startup_ms=startup_ms,
        replies_heard=sum(1 for t in turns if t["first_agent_audio_written_s"] is not None),
        ok=rep["outcome"]["ok"] and not violations,
        note="; ".join(violations) or rep["outcome"]["detail"],
    )


def run_sdk(emu: Any, work: Path, key_file: Path, raw: Path, index: int) -> Round:
    out = work / f"sdk-{index}"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--role", "sdk",
        "--base-url", emu.base_url, "--agent-id", emu.agent_id, "--api-key-file", str(key_file),
        "--input-raw", str(raw), "--out", str(out),
    ]
    spawn_s = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the SDK client failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    fig = json.loads(lines[-1])
    length_s, startup_ms, violations = _record_figures(emu, index, spawn_s)
    return Round(
        client="sdk",
        old_audio_ms=fig["old_audio_ms"],
        received_to_played_ms=fig["received_to_played_ms"],
        cpu_s=fig["cpu_s"],
        peak_rss_mb=fig["peak_rss_mb"],
        conversation_s=length_s,
        startup_ms=startup_ms,
        replies_heard=fig["replies_heard"],
        ok=fig["completed"] and not violations,
        note="; ".join(violations),
    )


def _median(values: list[float]) -> float | None:
    clean = [v for v in values if v is not None and v == v]
    return statistics.median(clean) if clean else None


def _fmt(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def table(rounds: list[Round]) -> str:
    """The side-by-side table with ratios (device / SDK)."""
    by = {c: [r for r in rounds if r.client == c] for c in ("device", "sdk")}

    def med(client: str, get: Callable[[Round], Any]) -> float | None:
        values: list[float] = []
        for r in by[client]:
            v = get(r)
            if isinstance(v, list):
                values.extend(v)
            elif v is not None:
                values.append(v)
        return _median(values)

    rows = [
        ("interruption → silence (ms of old reply heard)", lambda r: r.old_audio_ms, 1),
        ("received → played (ms)", lambda r: r.received_to_played_ms, 1),
        ("CPU s per conversation minute", lambda r: r.cpu_per_minute, 2),
        ("peak RSS (MB)", lambda r: r.peak_rss_mb, 1),
        ("start-up → first audio sent (ms)", lambda r: r.startup_ms, 0),
        ("replies heard (of 2)", lambda r: r.replies_heard, 0),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'device':>9}  {'SDK':>9}  {'device/SDK':>10}"]
    for name, get, digits in rows:
        d, s = med("device", get), med("sdk", get)
        # A ratio of two figures below the resolution of the measurement means nothing.
        ratio = "—" if d is None or s is None or s < 0.5 else f"{d / s:.2f}"
        lines.append(f"{name:<{width}}  {_fmt(d, digits):>9}  {_fmt(s, digits):>9}  {ratio:>10}")
    return "\n".join(lines)


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), "
            f"Python {platform.python_version()}")


def run_benchmark(rounds: int, work: Path) -> tuple[str, list[Round]]:
    """Alternate device and SDK rounds against one emulator; return the report text."""
    import elevenlabs

    from device import __version__
    from device.bench import fixtures, wavfile
    from device.emulator import Emulator
    from device.emulator.scenario import load_scenario

    work.mkdir(parents=True, exist_ok=True)
    demo = fixtures.demo_input()
    wav = work / "input.wav"
    wavfile.write_wav(wav, demo.pcm, RATE_HZ)
    raw = work / "input.raw"
    raw.write_bytes(demo.pcm)
    timeline = work / "timeline.toml"
    timeline.write_text('[[step]]\nat_s = 0.0\naction = "click"\n')
    key = base64.b32encode(os.urandom(15)).decode().lower()
    key_file = work / "api_key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    scenario = load_scenario(fixtures.DEMO_SCENARIO)
    results: list[Round] = []
    with Emulator(scenario, api_key=key) as emu:
        index = 0
        for _ in range(rounds):
            results.append(run_device(emu, work, key_file, wav, timeline, index))
            index += 1
            results.append(run_sdk(emu, work, key_file, raw, index))
            index += 1
    head = (
        f"voice-appliance {__version__} vs elevenlabs {elevenlabs.__version__} SDK "
        f"(Conversation + DefaultAudioInterface-like loopback), {rounds} round(s) each\n"
        f"machine: {machine()}\n"
        f"scenario: {scenario.name} (tool call, barge-in, agent hangs up); input: demo speech "
        f"{demo.duration_s:.1f} s"
    )
    notes = [f"  {r.client} round: {r.note}" for r in results if not r.ok]
    text = head + "\n\n" + table(results)
    if notes:
        text += "\n\nruns that did not finish cleanly:\n" + "\n".join(notes)
    return text, results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--short", action="store_true", help="one round each (quick check)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per client (default 3)")
    p.add_argument("--work", default=str(ROOT / "bench-out" / "vs-sdk"), help="working folder")
    # internal: the SDK client process
    p.add_argument("--role", choices=["harness", "sdk"], default="harness", help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    p.add_argument("--agent-id", help=argparse.SUPPRESS)
    p.add_argument("--api-key-file", help=argparse.SUPPRESS)
    p.add_argument("--input-raw", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--timeout-s", type=float, default=120.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "sdk":
        return run_sdk_client(args)
    text, results = run_benchmark(1 if args.short else args.rounds, Path(args.work))
    print(text)
    return 0 if all(r.ok for r in results) else 1


def test_device_vs_sdk(tmp_path: Path) -> None:
    """pytest entry (provisioning/dev.sh bench): the short mode, table printed."""
    import pytest

    pytest.importorskip("elevenlabs", reason="the official SDK is the `baseline` extra: pip install -e .[baseline]")
    rounds = int(os.environ.get("BENCH_ROUNDS", "1"))
    text, results = run_benchmark(rounds, tmp_path)
    print("\n" + text)
    assert all(r.ok for r in results), text


if __name__ == "__main__":
    sys.exit(main())
