"""ALSA ``type file`` devices: real ALSA without a sound card (tests and the bench).

One static configuration file defines templates that take the file as an
argument, so any number of devices can be named in one process without
rewriting ALSA's configuration (which alsa-lib loads once and reloads only
when ``ALSA_CONFIG_PATH`` or the files change)::

    va_in:IN="/abs/in.raw"            capture: raw frames in the format the PCM is
                                      opened with (S16_LE 16 kHz, 1 or 2 channels)
    va_out:OUT="/abs/out.raw"         playback: raw frames exactly as written
    va_out16:OUT="/abs/out.raw"       playback through plug: always S16_LE mono 16 kHz
    va_pulse:SERVER="unix:/abs/native",DEVICE="speaker"
                                      a sink or source of a private PulseAudio daemon
                                      (the clocked card, device/bench/clockedcard.py)

Use::

    conf = filedevices.install(tmp_dir)          # writes the file, sets ALSA_CONFIG_PATH
    filedevices.prepare_input(Path("question.wav"), tmp_dir / "in.raw")
    cfg = AudioConfig(capture_device=filedevices.capture_device(tmp_dir / "in.raw"),
                      playback_device=filedevices.playback_device(tmp_dir / "out.raw", fixed_16k=True),
                      pace_realtime=True)
    …
    pcm = filedevices.read_output(tmp_dir / "out.raw")

Behaviour of alsa-lib's file plugin that these helpers absorb:

- The ``null`` slave has no clock; set ``audio.pace_realtime`` for real time.
- The plugin reads its input file only on plain reads, not when a plug/rate
  plugin above it uses mmap: capture through ``plug`` loses the input, so
  :func:`prepare_input` converts WAVs to 16 kHz itself.
- After the input ends the plugin repeats stale buffer contents rather than
  silence, so :func:`prepare_input` appends a silent tail long enough that
  the stale contents are silence too. The input file is read when the
  capture PCM opens: it must exist by then.
- Output is only written to the file when the PCM's buffer overflows into it,
  on ``drop()`` and on close: read it after the playback worker stopped.
  Everything written to the PCM lands in the file, also what ``drop()``
  discards on a real card.
- Each open of an output device with an existing file creates a new segment
  ``out.raw.0001``, ``out.raw.0002`` … (the plugin's ``truncate false``);
  :func:`read_output` joins them, :func:`playback_device` removes old ones.
"""

from __future__ import annotations

import os
import re
import wave
from pathlib import Path

from device.core.audioformat import CAPTURE_RATE_HZ
from device.core.convert import to_mono
from device.core.errors import AudioError
from device.core.resample import resample

CONFIG_NAME = "voice-appliance-filedevices.conf"
ALSA_TOP_CONFIG = Path("/usr/share/alsa/alsa.conf")
SILENT_TAIL_S = 2.0  # > the longest period plus buffer a capture may use

ASOUNDRC = """\
# ALSA file devices of voice-appliance (device/drivers/filedevices.py).
# The file is an argument of the device name: va_in:IN="/abs/in.raw"

pcm.va_in {
    @args [ IN ]
    @args.IN { type string }
    type file
    slave.pcm "null"
    file "/dev/null"
    infile $IN
    format "raw"
    hint.description "voice-appliance: capture from a raw S16_LE 16 kHz file"
}

pcm.va_out {
    @args [ OUT ]
    @args.OUT { type string }
    type file
    slave.pcm "null"
    file $OUT
    format "raw"
    truncate false
    hint.description "voice-appliance: playback into a raw file, as written"
}

pcm.va_out16 {
    @args [ OUT ]
    @args.OUT { type string }
    type plug
    slave {
        pcm {
            type file
            slave.pcm "null"
            file $OUT
            format "raw"
            truncate false
        }
        format S16_LE
        rate 16000
        channels 1
    }
    hint.description "voice-appliance: playback into a raw S16_LE 16 kHz mono file"
}

pcm.va_pulse {
    @args [ SERVER DEVICE ]
    @args.SERVER { type string }
    @args.DEVICE { type string }
    type pulse
    server $SERVER
    device $DEVICE
    hint.description "voice-appliance: a sink or source of a private PulseAudio (device/bench/clockedcard.py)"
}
"""

_SEGMENT = re.compile(r"\.(\d{4})$")


def install(directory: Path) -> Path:
    """Write the device definitions into ``directory`` and point this process's ALSA at them.

    Child processes inherit the setting through the environment; pass
    :func:`alsa_env` to processes started with their own environment.
    """
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / CONFIG_NAME
    if not conf.exists() or conf.read_text() != ASOUNDRC:
        tmp = conf.with_suffix(".tmp")
        tmp.write_text(ASOUNDRC)
        tmp.replace(conf)
    os.environ.update(alsa_env(conf))
    return conf


def installed() -> bool:
    """Whether this process's ALSA already loads an existing, current copy of these definitions."""
    for p in os.environ.get("ALSA_CONFIG_PATH", "").split(":"):
        if p and Path(p).name == CONFIG_NAME:
            try:
                return Path(p).read_text() == ASOUNDRC
            except OSError:
                return False
    return False


def alsa_env(conf: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``ALSA_CONFIG_PATH`` that loads ALSA's own configuration and then ``conf``.

    An earlier file-device configuration in the variable is replaced, not kept:
    its directory may be gone, and alsa-lib complains about every missing file.
    """
    current = (os.environ if environ is None else environ).get("ALSA_CONFIG_PATH", "")
    stale = {str(conf), CONFIG_NAME}
    parts = [p for p in current.split(":") if p and p not in stale and Path(p).name not in stale]
    parts = parts or [str(ALSA_TOP_CONFIG)]
    parts.append(str(conf))
    return {"ALSA_CONFIG_PATH": ":".join(parts)}


def _quoted(path: Path) -> str:
    text = str(path)
    if not path.is_absolute():
        raise AudioError(f"file device paths must be absolute, got {text!r}")
    # ALSA's argument parser has no escapes; '%' would be expanded by the file plugin
    if any(c in text for c in '"\\%\n\'') :
        raise AudioError(f"file device path {text!r} contains a quote, backslash or %; choose another path")
    return f'"{text}"'


def capture_device(raw_path: Path) -> str:
    """Name of a capture device reading raw S16_LE 16 kHz frames from ``raw_path``."""
    return f"va_in:IN={_quoted(raw_path)}"


def pulse_device(server: str, device: str) -> str:
    """Name of the ALSA device for ``device`` (a sink, or a source such as ``room.monitor``) of ``server``."""
    for text in (server, device):
        if any(c in text for c in '"\\%\n\''):
            raise AudioError(f"{text!r} contains a quote, backslash or %; choose another path or name")
    return f'va_pulse:SERVER="{server}",DEVICE="{device}"'


def playback_device(out_path: Path, *, fixed_16k: bool = False) -> str:
    """Name of a playback device writing into ``out_path`` (old output and segments removed).

    ``fixed_16k``: the file always holds S16_LE mono 16 kHz whatever the agent's
    format (ALSA converts), so it can become a WAV without knowing the format.
    """
    for old in output_segments(out_path):
        old.unlink()
    return f"{'va_out16' if fixed_16k else 'va_out'}:OUT={_quoted(out_path)}"


def output_segments(out_path: Path) -> list[Path]:
    """``out_path`` and its ``.0001``… continuations, in the order they were written."""
    segments = [out_path] if out_path.exists() else []
    if out_path.parent.is_dir():
        extra = []
        for p in out_path.parent.iterdir():
            if p.name.startswith(out_path.name + "."):
                m = _SEGMENT.search(p.name)
                if m and p.name == f"{out_path.name}.{m.group(1)}":
                    extra.append((int(m.group(1)), p))
        segments += [p for _, p in sorted(extra)]
    return segments


def read_output(out_path: Path) -> bytes:
    """Everything the playback devices wrote into ``out_path``, segments joined."""
    return b"".join(p.read_bytes() for p in output_segments(out_path))


def read_wav(path: Path) -> tuple[bytes, int, int]:
    """(S16_LE frames, rate_hz, channels) of a 16-bit PCM WAV file."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise AudioError(
                    f"{path} is {8 * w.getsampwidth()}-bit; use 16-bit PCM "
                    f"(sox {path.name} -b 16 out.wav)"
                )
            return w.readframes(w.getnframes()), w.getframerate(), w.getnchannels()
    except (wave.Error, EOFError) as e:
        raise AudioError(f"{path} is not a PCM WAV file ({e}); convert it with sox") from None


def write_wav(path: Path, pcm: bytes, rate_hz: int = 16000, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm)


def prepare_input(src: Path, dest_raw: Path, *, channels: int = 1, tail_s: float = SILENT_TAIL_S) -> None:
    """Turn a 16-bit WAV (any rate, mono or stereo) or a raw S16_LE 16 kHz mono file
    into a capture file: S16_LE 16 kHz with ``channels`` channels and a silent tail.
    """
    if channels not in (1, 2):
        raise AudioError(f"a capture file has 1 or 2 channels, not {channels}")
    if src.suffix.lower() == ".wav":
        pcm, rate_hz, src_channels = read_wav(src)
    else:
        pcm, rate_hz, src_channels = src.read_bytes(), CAPTURE_RATE_HZ, 1
    pcm = pcm[: len(pcm) - len(pcm) % (2 * src_channels)]
    sides = [pcm] if src_channels == 1 else [to_mono(pcm, 2, "left"), to_mono(pcm, 2, "right")]
    if channels == 1 and src_channels == 2:
        sides = [to_mono(pcm, 2, "mix")]
    elif channels == 2 and src_channels == 1:
        sides = [pcm, pcm]
    if rate_hz != CAPTURE_RATE_HZ:
        sides = [resample(side, rate_hz, CAPTURE_RATE_HZ) for side in sides]
    out = sides[0] if channels == 1 else _interleave(sides[0], sides[1])
    tail = bytes(2 * channels * int(tail_s * CAPTURE_RATE_HZ))
    dest_raw.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest_raw.with_name(dest_raw.name + ".tmp")
    tmp.write_bytes(out + tail)
    tmp.replace(dest_raw)  # a capture device opening it meanwhile sees all or nothing


def _interleave(left: bytes, right: bytes) -> bytes:
    n = min(len(left), len(right))
    out = bytearray(2 * n)
    view = memoryview(out).cast("h")
    view[0::2] = memoryview(left[:n]).cast("h")
    view[1::2] = memoryview(right[:n]).cast("h")
    return bytes(out)
