"""File-device helpers: names, inputs with a silent tail, output segments."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from device.core.errors import AudioError
from device.drivers import filedevices


def test_device_names_quote_the_path(tmp_path: Path) -> None:
    raw = tmp_path / "in put,1.raw"
    assert filedevices.capture_device(raw) == f'va_in:IN="{raw}"'
    assert filedevices.playback_device(tmp_path / "o.raw") == f'va_out:OUT="{tmp_path}/o.raw"'
    assert filedevices.playback_device(tmp_path / "o.raw", fixed_16k=True).startswith("va_out16:")


@pytest.mark.parametrize("bad", ["relative.raw", "/tmp/a\"b.raw", "/tmp/50%.raw", "/tmp/a\\b.raw"])
def test_paths_alsa_cannot_carry_are_refused(bad: str) -> None:
    with pytest.raises(AudioError):
        filedevices.capture_device(Path(bad))


def test_alsa_env_keeps_alsa_own_config_first(tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    env = filedevices.alsa_env(conf, {})
    assert env["ALSA_CONFIG_PATH"] == f"{filedevices.ALSA_TOP_CONFIG}:{conf}"
    again = filedevices.alsa_env(conf, env)
    assert again == env  # idempotent
    other = filedevices.alsa_env(conf, {"ALSA_CONFIG_PATH": "/etc/mine.conf"})
    assert other["ALSA_CONFIG_PATH"] == f"/etc/mine.conf:{conf}"
    newer = tmp_path / "newer" / filedevices.CONFIG_NAME
    mine = {"ALSA_CONFIG_PATH": "/etc/mine.conf"}
    replaced = filedevices.alsa_env(newer, filedevices.alsa_env(tmp_path / "gone" / filedevices.CONFIG_NAME, mine))
    assert replaced["ALSA_CONFIG_PATH"] == f"/etc/mine.conf:{newer}"  # an older one is not kept


def test_prepare_input_appends_a_silent_tail(tmp_path: Path) -> None:
    pcm = struct.pack("<4h", 1, 2, 3, 4)
    filedevices.write_wav(tmp_path / "a.wav", pcm, 16000, 2)
    filedevices.prepare_input(tmp_path / "a.wav", tmp_path / "a.raw", channels=2, tail_s=0.5)
    data = (tmp_path / "a.raw").read_bytes()
    assert data[: len(pcm)] == pcm
    assert data[len(pcm) :] == bytes(4 * 8000)


def test_prepare_input_converts_rate_and_channels(tmp_path: Path) -> None:
    stereo_8k = struct.pack("<hh", 100, 300) * 800  # 0.1 s
    filedevices.write_wav(tmp_path / "s.wav", stereo_8k, 8000, 2)
    filedevices.prepare_input(tmp_path / "s.wav", tmp_path / "mono.raw", tail_s=0)
    mono = struct.unpack("<1600h", (tmp_path / "mono.raw").read_bytes())  # 0.1 s at 16 kHz
    assert all(abs(x - 200) <= 1 for x in mono[100:-100])  # mixed to mono; the filter rings in and out at the edges
    filedevices.write_wav(tmp_path / "m.wav", struct.pack("<h", 5) * 1600, 16000, 1)
    filedevices.prepare_input(tmp_path / "m.wav", tmp_path / "st.raw", channels=2, tail_s=0)
    assert (tmp_path / "st.raw").read_bytes() == struct.pack("<hh", 5, 5) * 1600
    with pytest.raises(AudioError):
        filedevices.prepare_input(tmp_path / "m.wav", tmp_path / "x.raw", channels=3)


def test_prepare_input_takes_raw_as_16k_mono(tmp_path: Path) -> None:
    (tmp_path / "a.raw").write_bytes(b"\x01\x00\x02\x00\x03")
    filedevices.prepare_input(tmp_path / "a.raw", tmp_path / "b.raw", tail_s=0.001)
    assert (tmp_path / "b.raw").read_bytes() == b"\x01\x00\x02\x00" + bytes(32)


def test_output_segments_join_in_order_and_are_cleared(tmp_path: Path) -> None:
    out = tmp_path / "out.raw"
    out.write_bytes(b"A")
    (tmp_path / "out.raw.0002").write_bytes(b"C")
    (tmp_path / "out.raw.0001").write_bytes(b"B")
    (tmp_path / "out.raw.x").write_bytes(b"?")
    (tmp_path / "out.raw.00011").write_bytes(b"?")
    assert filedevices.read_output(out) == b"ABC"
    filedevices.playback_device(out)
    assert filedevices.read_output(out) == b""
    assert (tmp_path / "out.raw.x").exists()


def test_install_writes_the_config_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALSA_CONFIG_PATH", raising=False)
    conf = filedevices.install(tmp_path / "alsa")
    assert "pcm.va_in" in conf.read_text()
    mtime = conf.stat().st_mtime_ns
    assert filedevices.install(tmp_path / "alsa") == conf
    assert conf.stat().st_mtime_ns == mtime
    import os

    assert os.environ["ALSA_CONFIG_PATH"].endswith(str(conf))
