"""Sound cards: find them, pick the asound.conf template that fits, fill in the real card name.

Pure parsing of ``/proc/asound/cards``, ``/proc/asound/cardN/stream0`` (what a
USB card takes: channels and rates per direction) and ``arecord -l`` /
``aplay -l``; then a proposal (template + card names + rates/channels) and
the rendered file. The templates are ``provisioning/asound/*.conf`` (installed
under ``$prefix/share/voice-appliance/asound``); rendering edits only the
lines that name the card, the rate and the channels, so the result stays the
commented file docs/hardware.md describes. :func:`install` writes it, keeping a
backup of the file it replaces.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from device.commands.bringup import Result
from device.core.errors import DeviceError

log = logging.getLogger(__name__)

_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[(\S+)\s*\]:\s*(\S+)\s+-\s+(.*?)\s*$")
_LIST_LINE = re.compile(r"^card\s+(\d+):\s+(\S+)\s+\[(.*?)\],\s+device\s+(\d+):")
_HAT_WORDS = ("seeed", "wm8960", "tlv320aic3", "respeaker")
PREFERRED_RATE_HZ = 48000


@dataclass(frozen=True)
class Stream:
    """What one direction of a USB card takes (from stream0)."""

    channels: tuple[int, ...] = ()
    rates_hz: tuple[int, ...] = ()
    rate_range_hz: tuple[int, int] | None = None  # "8000 - 48000 (continuous)"

    def takes_rate(self, rate_hz: int) -> bool:
        if rate_hz in self.rates_hz:
            return True
        return self.rate_range_hz is not None and self.rate_range_hz[0] <= rate_hz <= self.rate_range_hz[1]

    def best_rate_hz(self) -> int:
        if (not self.rates_hz and self.rate_range_hz is None) or self.takes_rate(PREFERRED_RATE_HZ):
            return PREFERRED_RATE_HZ
        candidates = list(self.rates_hz) + ([self.rate_range_hz[1]] if self.rate_range_hz else [])
        return max(candidates)


@dataclass(frozen=True)
class Card:
    index: int
    id: str  # the name used in CARD=…, hw:CARD=…
    driver: str
    name: str
    long_name: str = ""
    capture: bool = False
    playback: bool = False
    streams: Mapping[str, Stream] = field(default_factory=dict)  # "capture"/"playback", USB cards only

    @property
    def kind(self) -> str:
        text = f"{self.id} {self.driver} {self.name} {self.long_name}".lower()
        if any(w in text for w in _HAT_WORDS):
            return "hat"
        if self.driver == "USB-Audio":
            return "usb"
        if self.id == "Headphones" or "headphones" in self.name.lower():
            return "headphones"
        if "hdmi" in text:
            return "hdmi"
        return "other"

    def describe(self) -> str:
        dirs = "/".join(d for d, on in (("capture", self.capture), ("playback", self.playback)) if on) or "no PCM"
        extra = ""
        for direction in ("capture", "playback"):
            st = self.streams.get(direction)
            if st:
                rates = ",".join(str(r) for r in st.rates_hz)
                if st.rate_range_hz:
                    rates = f"{st.rate_range_hz[0]}-{st.rate_range_hz[1]}"
                ch = ",".join(str(c) for c in st.channels)
                extra += f"; {direction} {ch} ch @ {rates} Hz"
        return f"card {self.index}: {self.id} [{self.name}] ({self.driver}, {self.kind}, {dirs}{extra})"


def parse_cards(text: str) -> list[Card]:
    """``/proc/asound/cards``: two lines per card."""
    cards: list[Card] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _CARD_LINE.match(line)
        if not m:
            continue
        long_name = lines[i + 1].strip() if i + 1 < len(lines) and not _CARD_LINE.match(lines[i + 1]) else ""
        cards.append(Card(int(m.group(1)), m.group(2), m.group(3), m.group(4), long_name))
    return cards


def parse_device_list(text: str) -> set[int]:
    """Card numbers in ``arecord -l`` / ``aplay -l`` output."""
    return {int(m.group(1)) for line in text.splitlines() if (m := _LIST_LINE.match(line.strip()))}


def parse_stream(text: str) -> dict[str, Stream]:
    """``/proc/asound/cardN/stream0`` of a USB card: channels and rates of every altset, per direction."""
    out: dict[str, Stream] = {}
    direction = ""
    channels: dict[str, set[int]] = {}
    rates: dict[str, set[int]] = {}
    ranges: dict[str, tuple[int, int]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line in ("Playback:", "Capture:"):
            direction = line[:-1].lower()
            channels.setdefault(direction, set())
            rates.setdefault(direction, set())
        elif direction and line.startswith("Channels:"):
            with contextlib.suppress(ValueError):
                channels[direction].add(int(line.split(":", 1)[1].split()[0]))
        elif direction and line.startswith("Rates:"):
            value = line.split(":", 1)[1]
            m = re.match(r"\s*(\d+)\s*-\s*(\d+)", value)
            if m:
                ranges[direction] = (int(m.group(1)), int(m.group(2)))
            else:
                rates[direction].update(int(v) for v in re.findall(r"\d+", value))
    for d in channels:
        out[d] = Stream(tuple(sorted(channels[d])), tuple(sorted(rates[d])), ranges.get(d))
    return out


# -- reading a system -----------------------------------------------------------------------


def _list_output(argv: Sequence[str]) -> str | None:
    try:
        proc = subprocess.run(list(argv), capture_output=True, timeout=10, check=False, stdin=subprocess.DEVNULL)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.decode("utf-8", "replace") if proc.returncode == 0 else None


def detect(
    root: Path = Path("/"),
    lister: Callable[[Sequence[str]], str | None] = _list_output,
) -> list[Card]:
    """The cards under ``root``/proc/asound, with directions from ``arecord -l``/``aplay -l``.

    Without alsa-utils (``lister`` returns None) the directions come from the
    cards' ``pcmNc``/``pcmNp`` directories.
    """
    proc = root / "proc" / "asound"
    try:
        text = (proc / "cards").read_text()
    except OSError:
        return []
    captures = lister(["arecord", "-l"]) if root == Path("/") else None
    playbacks = lister(["aplay", "-l"]) if root == Path("/") else None
    cards = []
    for c in parse_cards(text):
        card_dir = proc / f"card{c.index}"
        streams: dict[str, Stream] = {}
        with contextlib.suppress(OSError):
            streams = parse_stream((card_dir / "stream0").read_text())
        names = [p.name for p in card_dir.iterdir()] if card_dir.is_dir() else []
        cap = c.index in parse_device_list(captures) if captures is not None else any(
            re.fullmatch(r"pcm\d+c", n) for n in names)
        play = c.index in parse_device_list(playbacks) if playbacks is not None else any(
            re.fullmatch(r"pcm\d+p", n) for n in names)
        cards.append(Card(c.index, c.id, c.driver, c.name, c.long_name, cap, play, streams))
    return cards


def detect_from(cards_text: str, arecord_l: str, aplay_l: str, streams: Mapping[int, str] | None = None) -> list[Card]:
    """Like :func:`detect`, from captured text (tests, a support bundle)."""
    caps, plays = parse_device_list(arecord_l), parse_device_list(aplay_l)
    return [
        Card(c.index, c.id, c.driver, c.name, c.long_name, c.index in caps, c.index in plays,
             parse_stream((streams or {}).get(c.index, "")))
        for c in parse_cards(cards_text)
    ]


# -- proposal and rendering -----------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    template: str  # provisioning/asound/<template>.conf
    mic: Card
    speaker: Card | None
    mic_rate_hz: int = PREFERRED_RATE_HZ
    mic_channels: int = 1
    speaker_rate_hz: int = PREFERRED_RATE_HZ
    speaker_channels: int = 2
    why: str = ""

    def config_hint(self) -> str:
        """The [audio] lines that go with it."""
        card = (self.speaker or self.mic).id
        lines = [f'mixer_card = "hw:CARD={card}"', f'mixer_control = "…"   # one of: amixer -c {card} scontrols']
        if self.template == "2mic-hat":
            lines[1] = 'mixer_control = "Speaker"   # or "Headphone"'
        return "; ".join(lines)


def _channels(stream: Stream | None, want: int) -> int:
    if stream is None or not stream.channels:
        return want
    return want if want in stream.channels else min(stream.channels)


def propose(cards: Sequence[Card]) -> Proposal | None:
    """The template that fits these cards, or None when no card can be the kiosk's microphone."""
    hats = [c for c in cards if c.kind == "hat"]
    if hats:
        hat = hats[0]
        return Proposal("2mic-hat", hat, hat, why=f"{hat.id} is a 2-mic HAT codec ({hat.driver})")
    usb = [c for c in cards if c.kind == "usb"]
    mics = [c for c in usb if c.capture]
    if not mics:
        return None
    speakers = [c for c in usb if c.playback]
    # one device for both (a speakerphone, a headset) when there is one
    mic = next((c for c in mics if c.playback), mics[0])
    speaker = mic if mic.playback else (speakers[0] if speakers else None)
    cap = mic.streams.get("capture")
    mic_rate, mic_ch = (cap.best_rate_hz() if cap else PREFERRED_RATE_HZ), _channels(cap, 1)
    if speaker is None:
        jack = next((c for c in cards if c.kind == "headphones" and c.playback), None)
        if jack is None:
            return Proposal("usb", mic, None, mic_rate, mic_ch, why=f"{mic.id}: USB microphone, no speaker found")
        return Proposal("headphones", mic, jack, mic_rate, mic_ch, why=f"{mic.id}: USB microphone; speaker on the jack")
    play = speaker.streams.get("playback")
    sp_rate, sp_ch = (play.best_rate_hz() if play else PREFERRED_RATE_HZ), _channels(play, 2)
    template = "usb-mono" if sp_ch == 1 else "usb"
    same = "one USB device" if speaker is mic else f"USB microphone {mic.id}, USB speaker {speaker.id}"
    why = f"{same}; speaker {sp_ch} channel(s) at {sp_rate} Hz"
    return Proposal(template, mic, speaker, mic_rate, mic_ch, sp_rate, sp_ch, why)


def template_dirs() -> list[Path]:
    """Where the templates are: the installed share directory, then a source checkout."""
    return [
        Path(sys.prefix) / "share" / "voice-appliance" / "asound",
        Path(__file__).resolve().parents[2] / "provisioning" / "asound",
    ]


def read_template(name: str, dirs: Sequence[Path] | None = None) -> str:
    for d in dirs or template_dirs():
        path = d / f"{name}.conf"
        if path.is_file():
            return path.read_text()
    raise DeviceError(f"asound template {name}.conf not found in {', '.join(str(d) for d in dirs or template_dirs())}")


def render(template_text: str, p: Proposal) -> str:
    """The template with the real card names, rates and channels (only those lines change)."""
    if p.template == "2mic-hat":
        return template_text.replace("seeed2micvoicec", p.mic.id)
    out = []
    block = ""
    for line in template_text.splitlines(keepends=True):
        m = re.match(r"^pcm\.(\w+)\s*\{", line)
        if m:
            block = m.group(1)
        elif line.startswith("}"):
            block = ""
        if block == "kiosk_mic":
            line = _set_line(line, p.mic.id, p.mic_rate_hz, p.mic_channels)
        elif block == "kiosk_speaker" and p.speaker is not None and p.template != "headphones":
            line = _set_line(line, p.speaker.id, p.speaker_rate_hz, p.speaker_channels)
        out.append(line)
    header = f"# Written by `voice-appliance check soundcard --write` for: {p.why}\n"
    return header + "".join(out)


def _set_line(line: str, card: str, rate_hz: int, channels: int) -> str:
    line = re.sub(r'(@args\.CARD\s*\{\s*type string default )"[^"]*"', rf'\g<1>"{card}"', line)
    line = re.sub(r"^(\s+rate )\d+\s*$", rf"\g<1>{rate_hz}\n", line)
    return re.sub(r"^(\s+channels )\d+\s*$", rf"\g<1>{channels}\n", line)


def install(text: str, dest: Path, now: Callable[[], datetime.datetime] = datetime.datetime.now) -> Path | None:
    """Write ``dest`` atomically (mode 644); the old file is kept as ``dest.bak-TIMESTAMP``.

    Returns the backup's path, or None when there was nothing to back up.
    Identical content is left alone (no backup, no write).
    """
    backup = None
    try:
        old = dest.read_text()
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise DeviceError(f"cannot read {dest}: {e.strerror}; run as root (sudo)") from None
    if old == text:
        return None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if old is not None:
            backup = dest.with_name(f"{dest.name}.bak-{now().strftime('%Y%m%d-%H%M%S')}")
            backup.write_text(old)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        tmp.replace(dest)
    except OSError as e:
        raise DeviceError(f"cannot write {dest}: {e.strerror}; run as root (sudo)") from None
    return backup


def proposal_hint(root: Path = Path("/")) -> str:
    """For doctor: "; the cards here fit … (check soundcard --write)", or "" when there is nothing to propose."""
    try:
        cards = detect(root)
        p = propose(cards)
        if p is None:
            return ""
        dest = root / "etc" / "asound.conf"
        if dest.is_file() and dest.read_text() == render(read_template(p.template), p):
            return ""
    except (OSError, DeviceError):
        return ""
    return (
        f"; the sound cards here fit provisioning/asound/{p.template}.conf with card {p.mic.id}: "
        "sudo voice-appliance check soundcard --write (keeps a backup of /etc/asound.conf)"
    )


# -- the `check soundcard` part ---------------------------------------------------------


def check(
    root: Path, *, write: bool, line: Callable[[str], None],
    lister: Callable[[Sequence[str]], str | None] = _list_output,
) -> list[Result]:
    cards = detect(root, lister)
    if not cards:
        return [Result(
            "soundcard", "FAIL", f"no sound card in {root / 'proc/asound/cards'}",
            "plug in the USB device, or for a HAT install its driver (docs/hardware.md: Sound cards) and reboot",
        )]
    for c in cards:
        line(f"  {c.describe()}")
    p = propose(cards)
    if p is None:
        return [Result(
            "soundcard", "FAIL", "no card with a microphone (USB or 2-mic HAT) found",
            "plug in a USB microphone or speakerphone, or install the HAT's driver (docs/hardware.md: Sound cards)",
        )]
    text = render(read_template(p.template), p)
    dest = root / "etc" / "asound.conf"
    line(f"  proposal: provisioning/asound/{p.template}.conf with CARD {p.mic.id}"
         + (f" / {p.speaker.id}" if p.speaker and p.speaker is not p.mic else "") + f" ({p.why})")
    line(f"  config.toml [audio]: {p.config_hint()}")
    if not write:
        current = dest.read_text() if dest.is_file() else None
        if current == text:
            return [Result("soundcard", "PASS", f"{dest} already matches the proposal")]
        return [Result(
            "soundcard", "WARN", f"{dest} {'differs from the proposal' if current else 'does not exist'}",
            "install it: sudo voice-appliance check soundcard --write (the old file is kept as a backup)",
        )]
    backup = install(text, dest)
    kept = f"; the old one is {backup}" if backup else ""
    return [Result("soundcard", "PASS", f"wrote {dest} ({p.template}, card {p.mic.id}){kept}",
                   "then: voice-appliance check mic && voice-appliance check speaker")]
