"""Reading systemd unit files the way systemd does, for the tests (no I/O beyond reading)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
UNIT_PATH = SYSTEMD_DIR / "voice-appliance.service"
FIRSTBOOT_UNIT_PATH = SYSTEMD_DIR / "voice-appliance-firstboot.service"
SCREEN_UNIT_PATH = SYSTEMD_DIR / "voice-appliance-screen.service"
DROP_INS = sorted((SYSTEMD_DIR / "drop-ins").glob("*.conf"))


def parse_unit(*texts: str) -> dict[str, dict[str, list[str]]]:
    """Sections → keys → values, in order; later texts are drop-ins (an empty value resets a list)."""
    sections: dict[str, dict[str, list[str]]] = {}
    for text in texts:
        section = ""
        pending = ""
        for raw in text.splitlines():
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                sections.setdefault(section, {})
                continue
            key, _, value = line.partition("=")
            values = sections.setdefault(section, {}).setdefault(key.strip(), [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()
    return sections


def service(path: Path = UNIT_PATH, *drop_ins: Path) -> dict[str, list[str]]:
    texts = [path.read_text()] + [p.read_text() for p in drop_ins]
    return parse_unit(*texts)["Service"]
