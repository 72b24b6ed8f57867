"""Sound-card detection and the asound.conf it proposes (fake /proc/asound, fake `arecord -l`, real alsa-lib)."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from device.commands import soundcards

CARDS = """\
 0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                      bcm2835 Headphones
 1 [vc4hdmi        ]: vc4-hdmi - vc4-hdmi
                      vc4-hdmi
 2 [UACDemoV10     ]: USB-Audio - UACDemoV1.0
                      Jieli Technology UACDemoV1.0 at usb-0000:01:00.0-1.2, full speed
"""
ARECORD_L = """\
**** List of CAPTURE Hardware Devices ****
card 2: UACDemoV10 [UACDemoV1.0], device 0: USB Audio [USB Audio]
  Subdevices: 1/1
  Subdevice #0: subdevice #0
"""
APLAY_L = """\
**** List of PLAYBACK Hardware Devices ****
card 0: Headphones [bcm2835 Headphones], device 0: bcm2835 Headphones [bcm2835 Headphones]
  Subdevices: 8/8
card 1: vc4hdmi [vc4-hdmi], device 0: MAI PCM i2s-hifi-0 [MAI PCM i2s-hifi-0]
card 2: UACDemoV10 [UACDemoV1.0], device 0: USB Audio [USB Audio]
"""
MONO_STREAM = """\
Jieli Technology UACDemoV1.0 at usb-0000:01:00.0-1.2, full speed : USB Audio

Playback:
  Status: Stop
  Interface 1
    Altset 1
    Format: S16_LE
    Channels: 1
    Endpoint: 0x01 (1 OUT) (ADAPTIVE)
    Rates: 48000
    Bits: 16

Capture:
  Status: Stop
  Interface 2
    Altset 1
    Format: S16_LE
    Channels: 1
    Endpoint: 0x82 (2 IN) (ASYNC)
    Rates: 16000, 48000
    Bits: 16
"""
HAT_CARDS = """\
 0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                      bcm2835 Headphones
 3 [seeed2micvoicec]: seeed-2mic-voic - seeed-2mic-voicecard
                      seeed-2mic-voicecard
"""


def fake_root(tmp_path: Path, cards: str, streams: dict[int, str], pcms: dict[int, str]) -> Path:
    """A /proc/asound tree: cards, cardN/stream0, cardN/pcm0c|pcm0p directories."""
    proc = tmp_path / "proc" / "asound"
    proc.mkdir(parents=True)
    (proc / "cards").write_text(cards)
    for c in soundcards.parse_cards(cards):
        (proc / f"card{c.index}").mkdir()
        for d in pcms.get(c.index, ""):
            (proc / f"card{c.index}" / f"pcm0{d}").mkdir()
        if c.index in streams:
            (proc / f"card{c.index}" / "stream0").write_text(streams[c.index])
    return tmp_path


def test_parse_cards_and_lists() -> None:
    cards = soundcards.parse_cards(CARDS)
    assert [(c.index, c.id, c.driver) for c in cards] == [
        (0, "Headphones", "bcm2835_headpho"), (1, "vc4hdmi", "vc4-hdmi"), (2, "UACDemoV10", "USB-Audio")]
    assert cards[2].long_name.startswith("Jieli Technology")
    assert soundcards.parse_device_list(ARECORD_L) == {2}
    assert soundcards.parse_device_list(APLAY_L) == {0, 1, 2}


def test_parse_stream_channels_and_rates() -> None:
    s = soundcards.parse_stream(MONO_STREAM)
    assert s["playback"].channels == (1,)
    assert s["playback"].rates_hz == (48000,)
    assert s["capture"].rates_hz == (16000, 48000)
    cont = soundcards.parse_stream("Playback:\n  Channels: 2\n  Rates: 8000 - 44100 (continuous)\n")["playback"]
    assert cont.rate_range_hz == (8000, 44100)
    assert cont.best_rate_hz() == 44100


def test_mono_usb_speakerphone_gets_usb_mono_with_its_real_name() -> None:
    cards = soundcards.detect_from(CARDS, ARECORD_L, APLAY_L, {2: MONO_STREAM})
    p = soundcards.propose(cards)
    assert p is not None
    assert p.template == "usb-mono"
    assert p.mic.id == "UACDemoV10"
    assert p.speaker is p.mic
    assert p.speaker_channels == 1
    text = soundcards.render(soundcards.read_template(p.template), p)
    assert text.count('default "UACDemoV10"') == 2
    assert 'default "Device"' not in text
    speaker = text.split("pcm.kiosk_speaker {", 1)[1].split("\n}", 1)[0]
    assert "            channels 1\n" in speaker
    assert "            rate 48000\n" in speaker


def test_stereo_usb_card_gets_the_usb_template_at_a_rate_it_takes() -> None:
    stream = MONO_STREAM.replace("    Channels: 1\n    Endpoint: 0x01", "    Channels: 2\n    Endpoint: 0x01").replace(
        "Rates: 48000", "Rates: 44100")
    p = soundcards.propose(soundcards.detect_from(CARDS, ARECORD_L, APLAY_L, {2: stream}))
    assert p is not None
    assert p.template == "usb"
    assert p.speaker_channels == 2
    assert p.speaker_rate_hz == 44100
    text = soundcards.render(soundcards.read_template("usb"), p)
    speaker = text.split("pcm.kiosk_speaker {", 1)[1].split("\n}", 1)[0]
    assert "rate 44100" in speaker
    assert "channels 2" in speaker
    assert 'default "UACDemoV10"' in speaker


def test_usb_microphone_with_the_jack_gets_the_headphones_template() -> None:
    aplay = "card 0: Headphones [bcm2835 Headphones], device 0: bcm2835 Headphones [x]\n"
    arecord = "card 2: UACDemoV10 [UACDemoV1.0], device 0: USB Audio [USB Audio]\n"
    p = soundcards.propose(soundcards.detect_from(CARDS, arecord, aplay))
    assert p is not None
    assert p.template == "headphones"
    assert p.speaker is not None
    assert p.speaker.id == "Headphones"
    text = soundcards.render(soundcards.read_template(p.template), p)
    assert 'default "UACDemoV10"' in text
    assert "hw:CARD=Headphones,DEV=0" in text


def test_hat_gets_the_2mic_template_with_its_card_name() -> None:
    renamed = HAT_CARDS.replace("seeed2micvoicec", "seeed2micvoic_1")
    cards = soundcards.detect_from(renamed, "card 3: seeed2micvoic_1 [x], device 0: y [z]\n", "")
    p = soundcards.propose(cards)
    assert p is not None
    assert p.template == "2mic-hat"
    text = soundcards.render(soundcards.read_template(p.template), p)
    assert "hw:CARD=seeed2micvoic_1,DEV=0" in text
    assert "seeed2micvoicec" not in text


def test_no_microphone_no_proposal() -> None:
    assert soundcards.propose(soundcards.detect_from(CARDS, "", APLAY_L)) is None
    assert soundcards.propose([]) is None


def test_detect_reads_a_fake_proc_asound(tmp_path: Path) -> None:
    root = fake_root(tmp_path, CARDS, {2: MONO_STREAM}, {0: "p", 1: "p", 2: "cp"})
    cards = soundcards.detect(root)
    usb = [c for c in cards if c.id == "UACDemoV10"]
    assert usb
    assert usb[0].capture
    assert usb[0].playback
    assert usb[0].kind == "usb"
    assert usb[0].streams["playback"].channels == (1,)
    assert [c.kind for c in cards] == ["headphones", "hdmi", "usb"]


def test_check_proposes_then_writes_with_a_backup(tmp_path: Path) -> None:
    root = fake_root(tmp_path, CARDS, {2: MONO_STREAM}, {0: "p", 2: "cp"})
    etc = root / "etc"
    etc.mkdir()
    (etc / "asound.conf").write_text("# mine\n")
    lines: list[str] = []
    (r,) = soundcards.check(root, write=False, line=lines.append)
    assert r.verdict == "WARN"
    assert "--write" in r.fix
    assert any("usb-mono.conf with CARD UACDemoV10" in line for line in lines)
    assert (etc / "asound.conf").read_text() == "# mine\n"  # nothing written without --write
    (w,) = soundcards.check(root, write=True, line=lines.append)
    assert w.verdict == "PASS"
    written = (etc / "asound.conf").read_text()
    assert 'default "UACDemoV10"' in written
    assert (etc / "asound.conf").stat().st_mode & 0o777 == 0o644
    backups = list(etc.glob("asound.conf.bak-*"))
    assert len(backups) == 1
    assert backups[0].read_text() == "# mine\n"
    (again,) = soundcards.check(root, write=False, line=lines.append)
    assert again.verdict == "PASS"
    assert "already matches" in again.detail


def test_install_leaves_an_identical_file_alone(tmp_path: Path) -> None:
    dest = tmp_path / "asound.conf"
    t = datetime.datetime(2026, 1, 2, 3, 4, 5)
    assert soundcards.install("a\n", dest, now=lambda: t) is None
    assert soundcards.install("a\n", dest, now=lambda: t) is None
    backup = soundcards.install("b\n", dest, now=lambda: t)
    assert backup == tmp_path / "asound.conf.bak-20260102-030405"
    assert backup.read_text() == "a\n"


def test_no_cards_is_a_failure_with_advice(tmp_path: Path) -> None:
    (r,) = soundcards.check(tmp_path, write=False, line=lambda _: None)
    assert r.verdict == "FAIL"
    assert "no sound card" in r.detail


# -- alsa-lib reads what we write ---------------------------------------------------------


def _alsa_config_with_only(conf: Path) -> Path:
    """alsa-lib's own alsa.conf, loading ``conf`` where it would load the machine's files.

    The stock hook also loads /etc/asound.conf, ~/.asoundrc and conf.d: on a kiosk that already has a
    kiosk_mic (install.sh --asound), alsa-lib would merge the two definitions and the test would read
    the machine's configuration instead of the rendered one.
    """
    stock = Path("/usr/share/alsa/alsa.conf").read_text()
    start = stock.index("files [", stock.index("@hooks"))
    depth, end = 0, start
    for end in range(start, len(stock)):  # the files list may nest brackets ({ @func concat strings [ … ] })
        depth += {"[": 1, "]": -1}.get(stock[end], 0)
        if depth == 0 and stock[end] == "]":
            break
    isolated = conf.with_name("alsa-isolated.conf")
    isolated.write_text(stock[:start] + f'files [ "{conf}" ]' + stock[end + 1 :])
    return isolated


def _alsa_open_error(conf: Path, tool: str, device: str) -> str:
    env = {**os.environ, "ALSA_CONFIG_PATH": str(_alsa_config_with_only(conf))}
    proc = subprocess.run(
        [tool, "-D", device, "-d", "1", "-f", "S16_LE", "-r", "16000",
         "/dev/null" if tool == "arecord" else "/dev/zero"],
        capture_output=True, text=True, timeout=20, env=env, check=False,
    )
    assert proc.returncode != 0  # no card of that name here
    return proc.stderr


@pytest.mark.skipif(shutil.which("arecord") is None, reason="alsa-utils missing (provisioning/dev.sh installs it)")
@pytest.mark.parametrize(
    ("template", "cards", "arecord", "aplay", "streams", "speaker_card"),
    [
        ("usb-mono", CARDS, ARECORD_L, APLAY_L, {2: MONO_STREAM}, "UACDemoV10"),
        ("usb", CARDS, ARECORD_L, APLAY_L, {}, "UACDemoV10"),
        ("headphones", CARDS, ARECORD_L, "card 0: Headphones [b], device 0: x [y]\n", {}, "Headphones"),
        ("2mic-hat", HAT_CARDS.replace("seeed2micvoicec", "seeedZZ"), "card 3: seeedZZ [x], device 0: y [z]\n",
         "card 3: seeedZZ [x], device 0: y [z]\n", {}, "seeedZZ"),
    ],
)
def test_alsa_lib_parses_each_rendered_template_and_looks_for_the_real_card(
    tmp_path: Path, template: str, cards: str, arecord: str, aplay: str, streams: dict[int, str], speaker_card: str,
) -> None:
    """alsa-lib loads the file and resolves kiosk_mic/kiosk_speaker down to the card: the error names it.

    (This machine has no sound card, so opening stops at the card lookup; a syntax error, an unknown PCM
    or the template's placeholder card would give another message.)
    """
    p = soundcards.propose(soundcards.detect_from(cards, arecord, aplay, streams))
    assert p is not None
    assert p.template == template
    conf = tmp_path / "asound.conf"
    conf.write_text(soundcards.render(soundcards.read_template(template), p))
    mic_err = _alsa_open_error(conf, "arecord", "kiosk_mic")
    speaker_err = _alsa_open_error(conf, "aplay", "kiosk_speaker")
    default_err = _alsa_open_error(conf, "arecord", "default")
    assert "Unknown PCM" not in mic_err + speaker_err
    assert "parse" not in (mic_err + speaker_err).lower()
    mic_card = p.mic.id
    assert f"Cannot get card index for {mic_card}" in mic_err or f"'{mic_card}'" in mic_err, mic_err
    assert f"Cannot get card index for {speaker_card}" in speaker_err or f"'{speaker_card}'" in speaker_err, speaker_err
    assert mic_card in default_err  # pcm.!default is the kiosk's microphone


class FailingProbe:
    name = "test"

    def capture(self, device: str, channels: int) -> None:
        from device.core.errors import AudioError

        raise AudioError(f"microphone {device!r}: Unknown PCM: not found")

    def playback(self, device: str) -> None:
        pass

    def mixer(self, card: str, control: str) -> None:
        pass

    def devices(self, capture: bool) -> list[str]:
        return ["default", "kiosk_mic"]


def test_doctor_proposes_the_asound_conf_for_a_uacdemo_card(tmp_path: Path) -> None:
    from device.commands import doctor

    root = fake_root(tmp_path, CARDS, {2: MONO_STREAM}, {0: "p", 2: "cp"})
    ctx = doctor.Context(config_path=tmp_path / "none.toml", environ={}, asound_root=root,
                         audio_probe=FailingProbe())  # type: ignore[arg-type]
    ctx.cfg = doctor.load_settings(None, environ={})
    fail = [f for f in doctor.check_audio(ctx) if f.status is doctor.Status.FAIL]
    assert len(fail) == 1
    assert "provisioning/asound/usb-mono.conf with card UACDemoV10" in fail[0].fix
    assert "check soundcard --write" in fail[0].fix
    # once written, doctor no longer proposes it
    soundcards.check(root, write=True, line=lambda _: None)
    (again,) = [f for f in doctor.check_audio(ctx) if f.status is doctor.Status.FAIL]
    assert "check soundcard" not in again.fix
