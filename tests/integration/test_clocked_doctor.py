"""doctor: ALSA 'default' that goes to a desktop sound server (PipeWire, PulseAudio) is named, with the fix."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from device.bench.clockedcard import ClockedCard
from device.commands.doctor import AudioProbe, Context, Finding, Status, run_checks, sound_server_routes
from tests.integration.audiorig import sound_spans
from tests.support import sine

pytestmark = pytest.mark.realtime

PULSE_HOOK = Path("/etc/alsa/conf.d/99-pulse.conf")


class OpensEverything(AudioProbe):
    name = "test"

    def capture(self, device: str, channels: int) -> None:
        pass

    def playback(self, device: str) -> None:
        pass

    def devices(self, capture: bool) -> list[str]:
        return []


def audio_findings(tmp_path: Path, devices: str, conf_dirs: list[Path]) -> list[Finding]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[agent]\nagent_id = "agent_test"\n[audio]\n{devices}\n')
    ctx = Context(config_path=cfg, environ={}, key_file=str(tmp_path / "key"), systemd_dir=tmp_path / "none",
                  audio_probe=OpensEverything(), alsa_conf_dirs=conf_dirs)
    return run_checks(ctx, ["audio"])


def test_pipewire_as_alsa_default_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "99-pipewire-default.conf").write_text("pcm.!default { type pipewire }\n")
    findings = audio_findings(tmp_path, 'capture_device = "default"\nplayback_device = "default"', [conf])
    warn = [f for f in findings if f.status is Status.WARN]
    assert [f.status for f in findings[:2]] == [Status.OK, Status.OK]  # it opens now, as root, today
    assert len(warn) == 1
    assert "PipeWire" in warn[0].detail
    assert "99-pipewire-default.conf" in warn[0].detail
    assert "plughw:CARD=" in warn[0].fix
    assert "provisioning/asound" in warn[0].fix


def test_a_named_card_or_no_sound_server_is_fine(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "99-pipewire-default.conf").write_text("")
    named = 'capture_device = "plughw:CARD=Device,DEV=0"\nplayback_device = "plughw:CARD=Device,DEV=0"'
    assert all(f.status is Status.OK for f in audio_findings(tmp_path, named, [conf]))
    empty = tmp_path / "empty.d"
    empty.mkdir()
    assert sound_server_routes(["default"], [empty]) == []
    assert [r[1] for r in sound_server_routes(["pulse", "pipewire:NODE=x"], [empty])] == ["PulseAudio", "PipeWire"]


@pytest.mark.skipif(not PULSE_HOOK.exists(), reason="needs pulseaudio installed (provisioning/dev.sh setup)")
def test_against_pulseaudio_default_really_goes_to_the_server_and_doctor_says_so(
    tmp_path: Path, clocked_card: ClockedCard
) -> None:
    # With pulseaudio installed, 'default' is PulseAudio whenever a server answers: here the
    # clocked card's, as a desktop session's would be for its user.
    raw = tmp_path / "tone.raw"
    raw.write_bytes(sine(440, 16000, 0.5))
    env = {**clocked_card.client_env}
    with clocked_card.record_speaker() as rec:
        subprocess.run(["aplay", "-q", "-D", "default", "-t", "raw", "-f", "S16_LE", "-r", "16000", "-c", "1",
                        str(raw)], env=env, check=True, timeout=20, capture_output=True)
        threading.Event().wait(0.3)
        rec.stop()
    assert sound_spans(rec.pcm, rec.rate_hz), "'default' did not reach the sound server"
    findings = audio_findings(tmp_path, 'capture_device = "default"\nplayback_device = "default"',
                              [PULSE_HOOK.parent])
    warn = [f for f in findings if f.status is Status.WARN]
    assert len(warn) == 1
    assert "PulseAudio" in warn[0].detail
    assert "99-pulse.conf" in warn[0].detail
