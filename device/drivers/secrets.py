"""The API key: where it comes from, and keeping it (and signed-URL tokens) out of logs.

Order: the systemd credential ``$CREDENTIALS_DIRECTORY/elevenlabs_api_key``
(``LoadCredential=``), then ``agent.api_key_file`` (must not be readable by
group or others), then ``ELEVENLABS_API_KEY`` in the environment (development
only). The key is never taken from argv or the config file. A key file is a
regular file of at most ``KEY_MAX_BYTES``, read without blocking.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

from device.core.errors import CredentialError
from device.drivers.userfiles import KIB, UnsuitableFile, read_file

log = logging.getLogger(__name__)

CREDENTIAL_NAME = "elevenlabs_api_key"
ENV_VAR = "ELEVENLABS_API_KEY"
REDACTED = "<redacted>"


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED}, source={self.source!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


KEY_MAX_BYTES = 4 * KIB  # an API key is under 200 bytes; more is some other file


def read_key_bytes(path: Path) -> bytes:
    """A key file's bytes: a regular file of at most KEY_MAX_BYTES, never blocking (a FIFO, a device).

    Raises OSError (:class:`~device.drivers.userfiles.UnsuitableFile` for the wrong kind or size).
    """
    return read_file(path, KEY_MAX_BYTES)


def _read_key(path: Path, what: str) -> str:
    try:
        raw = read_key_bytes(path)
    except PermissionError:
        raise CredentialError(
            f"cannot read the {what} {path}: permission denied; the service reads it as root "
            f"(or use LoadCredential=, see docs/security.md)"
        ) from None
    except UnsuitableFile as e:
        raise unsuitable_key_file(path, what, e) from None
    except OSError as e:
        raise CredentialError(f"cannot read the {what} {path}: {e.strerror}") from None
    return parse_key(raw, path, what)


def unsuitable_key_file(path: Path, what: str, e: UnsuitableFile) -> CredentialError:
    """A key file that is no regular file, or too large for a key (the daemon's error and doctor's finding)."""
    return CredentialError(
        f"the {what} {path} cannot be used: {e.strerror}; it must be a plain file holding the API key alone "
        "on one line (a key is under 200 bytes)"
    )


def parse_key(raw: bytes, path: Path, what: str) -> str:
    """The key alone on one line; errors never quote the file's content (it may be most of a key).

    A UTF-8 byte order mark (Notepad), line ends and blanks around the key are dropped;
    a control or invisible character left in it (a NUL, an escape, a zero-width space)
    would make a key the server refuses, or a header the HTTP library refuses, so it is
    refused here, where the file can be named.
    """
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff").strip()
    except UnicodeDecodeError as e:
        raise CredentialError(
            f"the {what} {path} is not UTF-8 text (byte {e.start} is not valid); it must hold the API key "
            "alone on one line: save it again as plain text (e.g. sudoedit it and paste the key)"
        ) from None
    if not text or any(c.isspace() for c in text):
        raise CredentialError(
            f"the {what} {path} must hold the API key alone on one line; it is "
            + ("empty" if not text else "not a single word")
        )
    bad = next((i for i, c in enumerate(text) if not c.isprintable()), None)
    if bad is not None:
        raise CredentialError(
            f"the {what} {path} holds a control or invisible character (U+{ord(text[bad]):04X}, character "
            f"{bad + 1} of the key); it must hold the API key alone on one line: sudoedit it and paste the key again"
        )
    return text


def _is_plainly_a_path(value: str) -> bool:
    """True when ``value`` reads as a file path, not as a key pasted where the path belongs.

    An absolute path whose directory exists (other than ``/``) is a path with a typo at
    worst; anything else (``sk_…``, a relative name, a token with a slash) may be a key,
    and error messages must not echo it into the journal.
    """
    path = Path(value)
    try:
        return path.is_absolute() and path.parent != Path("/") and path.parent.is_dir()
    except (OSError, ValueError):
        return False


is_plainly_a_path = _is_plainly_a_path  # public name for `run --check`


UNIT_KEY_FILE = "/etc/voice-appliance/api_key"
# What to say when agent.api_key_file may be the key itself (the daemon's error and doctor's finding alike).
PASTED_KEY_FILE = (
    "agent.api_key_file is not the path of an existing file (its value is not shown: it may be the API key "
    "itself, which never belongs in the config)"
)
PASTED_KEY_FILE_FIX = (
    f"put the key in a root-only file: sudo install -m 600 /dev/null {UNIT_KEY_FILE} && sudoedit {UNIT_KEY_FILE}; "
    f"then set api_key_file = \"{UNIT_KEY_FILE}\" (or remove it: the unit loads {UNIT_KEY_FILE} with "
    "LoadCredential=)"
)


def _missing_key_file(value: str) -> CredentialError:
    if _is_plainly_a_path(value):
        return CredentialError(
            f"agent.api_key_file {value} does not exist; create it with: "
            f"sudo install -m 600 /dev/null {value} && sudoedit {value}"
        )
    return CredentialError(f"{PASTED_KEY_FILE}. {PASTED_KEY_FILE_FIX[0].upper()}{PASTED_KEY_FILE_FIX[1:]}")


def _private_file_secret(path: Path, st: os.stat_result, what: str) -> Secret:
    """The secret in ``path`` (stat ``st``), refused while anyone but its owner may read it."""
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialError(
            f"the {what} {path} is readable by others (mode {stat.filemode(st.st_mode)}); "
            f"fix it with: sudo chmod 600 {path}"
        )
    return Secret(_read_key(path, what), f"file {path}")


def load_api_key(
    api_key_file: str, environ: Mapping[str, str] | None = None
) -> Secret | None:
    """Find the API key; None when there is none (public agent or broker mode)."""
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / CREDENTIAL_NAME
        try:
            raw = read_key_bytes(path)
        except FileNotFoundError:
            raw = b""
        except UnsuitableFile as e:
            raise unsuitable_key_file(path, "systemd credential", e) from None
        except OSError as e:
            raise CredentialError(
                f"cannot read the systemd credential {path}: {e.strerror}; check the unit's LoadCredential="
            ) from None
        # The unit's SetCredential= fallback (one newline) stands for "no key file installed": a
        # credential of only whitespace is no key at all, so a public agent runs and a private one
        # is told where the key goes. Anything else must be a well-formed key.
        if raw.strip():
            return Secret(parse_key(raw, path, "systemd credential"), f"credential {CREDENTIAL_NAME}")
    if api_key_file:
        path = Path(api_key_file)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise _missing_key_file(api_key_file) from None
        except (OSError, ValueError) as e:  # e.g. a name too long for a file, a NUL byte: maybe a pasted key
            if _is_plainly_a_path(api_key_file):
                raise CredentialError(
                    f"cannot read the key file {path}: {getattr(e, 'strerror', None) or e}"
                ) from None
            raise _missing_key_file(api_key_file) from None
        return _private_file_secret(path, st, "key file")
    if env.get(ENV_VAR):
        log.warning("using the API key from $%s: for development only", ENV_VAR)
        return Secret(env[ENV_VAR].strip(), f"environment {ENV_VAR}")
    return None


# -- redaction ----------------------------------------------------------------

_registry_lock = threading.Lock()
_registered: set[str] = set()

# Query parameters and JSON/header fields whose values are secrets. Signed URLs
# are opaque (their token's name varies), so every value after '?' in a ws(s)
# URL is redacted as well.
_PARAM_RE = re.compile(
    r"(?i)((?:token|signature|conversation_signature|sig|api_key|xi-api-key|key)=)[^&\s'\"<>]+"
)
_HEADER_RE = re.compile(r"(?i)((?:xi-api-key|authorization)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)[^\s'\",}]+")
_WS_QUERY_RE = re.compile(r"(wss?://[^\s'\"?]+\?)([^\s'\"<>]+)")
# The userinfo of any URL (scheme://user:TOKEN@host): a signed URL may carry its token there.
_USERINFO_RE = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^\s/?#'\"<>]+@")


def register_secret(value: str) -> None:
    """Remember a secret so every log line has it replaced."""
    if len(value) >= 6:
        with _registry_lock:
            _registered.add(value)


def _keep_public_params(query: str) -> str:
    out = []
    for part in query.split("&"):
        name, _, _value = part.partition("=")
        out.append(part if name in ("agent_id", "source", "version") else f"{name}={REDACTED}")
    return "&".join(out)


def redact(text: str) -> str:
    """Replace known secrets and signed-URL tokens in ``text``."""
    with _registry_lock:
        secrets = sorted(_registered, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    text = _USERINFO_RE.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _WS_QUERY_RE.sub(lambda m: m.group(1) + _keep_public_params(m.group(2)), text)
    text = _PARAM_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _HEADER_RE.sub(lambda m: m.group(1) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Handler filter: renders each record and redacts message, args and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not hide the line
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info:
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


SCREEN_CREDENTIAL_NAME = "voice_appliance_screen_token"


def load_screen_token(token_file: str, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The screen server's token (``screen.token_file``), checked like a key file; None when none is set.

    The systemd credential ``voice_appliance_screen_token`` comes first. The token is never logged.
    """
    return _credential_or_file(SCREEN_CREDENTIAL_NAME, "screen token", "screen.token_file", token_file, environ,
                               blank_is_none=False)


MQTT_CREDENTIAL_NAME = "voice_appliance_mqtt_password"


def load_mqtt_password(password_file: str, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The MQTT broker password (``mqtt.password_file``), checked like a key file; None when none is set.

    The systemd credential ``voice_appliance_mqtt_password`` comes first. The password is never logged.
    """
    # As for the API key, a blank credential (a SetCredential= fallback) is none: look further.
    return _credential_or_file(MQTT_CREDENTIAL_NAME, "MQTT password", "mqtt.password_file", password_file, environ,
                               blank_is_none=True)


def _credential_or_file(
    credential: str, what: str, key: str, file: str, environ: Mapping[str, str] | None, *, blank_is_none: bool
) -> Secret | None:
    """A secret from the systemd credential ``credential``, else from the root-only file ``file`` (setting ``key``)."""
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / credential
        if path.exists() and not (blank_is_none and _blank_credential(path)):
            return Secret(_read_key(path, f"{what} credential"), f"credential {credential}")
    if not file:
        return None
    path = Path(file)
    try:
        st = path.stat()
    except OSError as e:
        raise CredentialError(
            f"cannot read {key} {path}: {e.strerror or e}; create it with: "
            f"sudo install -m 600 /dev/null {path} && sudoedit {path}"
        ) from None
    return _private_file_secret(path, st, f"{what} file")


def _blank_credential(path: Path) -> bool:
    try:
        return not read_key_bytes(path).strip()
    except OSError:
        return False  # unreadable: _read_key says why
