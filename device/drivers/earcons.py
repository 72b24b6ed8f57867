"""Earcons: short WAV cues (listening, done, error) played through the playback path.

Bundled defaults live in ``device/data/earcons``; ``audio.earcon_<name>`` names
a replacement WAV (16-bit PCM, mono or stereo, any rate, at most a few
seconds); ``audio.earcons = false`` turns them off. Files are checked when
playback is built, so a bad path fails at start with a config error, not
silently at the first cue.
"""

from __future__ import annotations

import importlib.resources
import io
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from device.core.config import AudioConfig
from device.core.convert import to_mono
from device.core.errors import ConfigError
from device.core.resample import resample
from device.drivers.userfiles import MIB, UnsuitableFile, read_file

EarconName = Literal["listening", "done", "error"]
EARCON_NAMES: tuple[EarconName, ...] = ("listening", "done", "error")
MAX_EARCON_S = 5.0
MAX_EARCON_BYTES = 8 * MIB  # 5 s of 16-bit stereo at 192 kHz is 3.7 MiB


@dataclass(frozen=True)
class Earcon:
    name: str
    pcm: bytes  # S16_LE mono
    rate_hz: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.rate_hz


def bundled_path(name: str) -> Path:
    return Path(str(importlib.resources.files("device") / "data" / "earcons" / f"{name}.wav"))


def load_wav(path: Path, name: str, key: str) -> Earcon:
    """Read a cue; errors name the config key and how to convert the file."""
    fix = f"convert it with: sox IN.wav -r 16000 -c 1 -b 16 {path.name}"
    try:
        with wave.open(io.BytesIO(read_file(path, MAX_EARCON_BYTES)), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if width != 2 or channels not in (1, 2):
                raise ConfigError(
                    f"{path} is {8 * width}-bit with {channels} channel(s); earcons must be "
                    f"16-bit mono or stereo WAV; {fix}",
                    key,
                )
            if frames > MAX_EARCON_S * rate:
                raise ConfigError(
                    f"{path} lasts {frames / rate:.1f} s; an earcon may last at most "
                    f"{MAX_EARCON_S:.0f} s; shorten it",
                    key,
                )
            data = w.readframes(frames)
    except FileNotFoundError:
        raise ConfigError(
            f"earcon file {path} does not exist; fix the path or leave it empty for the bundled cue", key
        ) from None
    except UnsuitableFile as e:
        raise ConfigError(
            f"earcon file {path} cannot be used: {e.strerror}; give the path of a WAV file (at most "
            f"{MAX_EARCON_S:.0f} s) or leave it empty for the bundled cue",
            key,
        ) from None
    except (wave.Error, EOFError) as e:
        raise ConfigError(f"{path} is not a readable PCM WAV file ({e}); {fix}", key) from None
    except OSError as e:
        raise ConfigError(f"cannot read earcon file {path}: {e.strerror}; check its permissions", key) from None
    return Earcon(name, to_mono(data, channels, "mix"), rate)


def load_earcons(cfg: AudioConfig) -> dict[str, Earcon]:
    """All cues named in the config (bundled where empty); none when earcons are off."""
    if not cfg.earcons:
        return {}
    out: dict[str, Earcon] = {}
    for name in EARCON_NAMES:
        configured: str = getattr(cfg, f"earcon_{name}")
        path = Path(configured) if configured else bundled_path(name)
        out[name] = load_wav(path, name, f"audio.earcon_{name}")
    return out


class EarconSet:
    """Cues converted once to the rate the speaker is open at."""

    def __init__(self, earcons: dict[str, Earcon]) -> None:
        self._earcons = earcons
        self._cache: dict[tuple[str, int], bytes] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._earcons)

    def pcm_at(self, name: str, rate_hz: int) -> bytes:
        key = (name, rate_hz)
        if key not in self._cache:
            e = self._earcons[name]
            self._cache[key] = resample(e.pcm, e.rate_hz, rate_hz)
        return self._cache[key]
