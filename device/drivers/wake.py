"""Wake-word detection (the only importer of the wake-word engines).

Two engines, both TFLite models run through the ``libtensorflowlite_c`` that
their wheels ship (64-bit Linux; microWakeWord also has a 32-bit ARM wheel):

* ``microwakeword`` — ``pymicro-wakeword``: small streaming models (about 50 kB)
  with their own cutoff in a JSON file; bundled okay_nabu, hey_jarvis, alexa,
  hey_mycroft.
* ``openwakeword`` — ``pyopen-wakeword``: a shared melspectrogram and embedding
  model plus a small classifier per wake word; bundled okay_nabu, hey_jarvis,
  alexa, hey_mycroft, hey_rhasspy.

:class:`WakeDetector` is fed the (noise-suppressed) capture blocks on the
controller thread, in 10 ms frames, and reports where in a block the wake word
ended, so the gate can send what was said after it. No threads, no I/O beyond
loading the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from device.core.audioformat import CAPTURE_RATE_HZ
from device.core.config import Config, WakeConfig
from device.core.errors import ConfigError
from device.core.wakerule import WakeRule, defaults_for
from device.drivers.userfiles import KIB, MIB, check_file, read_file

log = logging.getLogger(__name__)

FRAME_SAMPLES = CAPTURE_RATE_HZ // 100  # 10 ms
FRAME_BYTES = FRAME_SAMPLES * 2
OPENWAKEWORD_DEFAULT_THRESHOLD = 0.5
# Caps on a model given by path: the bundled .tflite files are 0.05 to 1.3 MiB, their JSON under 1 KiB.
MODEL_MAX_BYTES = 64 * MIB
DESCRIPTION_MAX_BYTES = 64 * KIB
# openWakeWord scores every 80 ms; the detector feeds it this much at a time.
_OWW_CHUNK_FRAMES = 8
# Verification: the second engine hears the last VERIFY_HELD_S of audio up to the detection, then
# VERIFY_PAD_S of silence that flushes its feature pipeline (without it the word's end is not scored).
VERIFY_HELD_S = 2.0
VERIFY_PAD_S = 0.5

ENGINE_PACKAGES = {"microwakeword": "pymicro-wakeword", "openwakeword": "pyopen-wakeword"}
INSTALL_HINT = (
    "install the wake extra: pip install 'voice-appliance[wake]' (the engines ship 64-bit wheels: "
    "use 64-bit Raspberry Pi OS on a Pi Zero 2 W, 3, 4 or 5)"
)


class Scorer(Protocol):
    """One engine: audio in, wake-word scores (0..1) out, one per model step."""

    def scores(self, pcm: bytes) -> Iterator[float]: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


def _import_engine(engine: str) -> Any:
    try:
        if engine == "microwakeword":
            import pymicro_wakeword

            return pymicro_wakeword
        import pyopen_wakeword

        return pyopen_wakeword
    except (ImportError, OSError) as e:  # OSError: the bundled TFLite library does not load here
        raise ConfigError(
            f"wake-word engine {engine!r} is not available on this machine ({e}); {INSTALL_HINT}", "wake.engine"
        ) from e


def bundled_models(engine: str) -> tuple[str, ...]:
    """The model names an engine ships (ConfigError when the engine is missing)."""
    mod = _import_engine(engine)
    return tuple(m.value for m in mod.Model)


@dataclass(frozen=True)
class ModelInfo:
    """What ``wake.model`` resolved to."""

    engine: str
    name: str  # the model's id (file stem)
    path: str  # "" for a bundled model
    cutoff: float  # the score that counts as a detection
    verify_cutoff: float | None = None  # the second engine's score that confirms one (None: not verified)


def resolve_model(cfg: WakeConfig) -> ModelInfo:
    """Check the engine and the model without loading it; ConfigError says what to fix."""
    names = bundled_models(cfg.engine)
    if cfg.model in names:
        if cfg.engine == "microwakeword":
            import pymicro_wakeword.microwakeword as mww_mod

            cutoff, _ = _description(Path(mww_mod.__file__).parent / "models" / f"{cfg.model}.json")
        else:
            cutoff = OPENWAKEWORD_DEFAULT_THRESHOLD
        shipped = defaults_for(cfg.engine, cfg.model, cutoff)
        return ModelInfo(cfg.engine, cfg.model, "", cfg.threshold or shipped.cutoff,
                         cfg.verify_threshold or shipped.verify_cutoff)
    path = Path(cfg.model)
    if not (path.suffix in (".json", ".tflite") or "/" in cfg.model):
        raise ConfigError(
            f"{cfg.model!r} is not a bundled {cfg.engine} model; choose one of {', '.join(names)} "
            "or give the path to your own model file",
            "wake.model",
        )
    want = ".json" if cfg.engine == "microwakeword" else ".tflite"
    if path.suffix != want:
        raise ConfigError(
            f"{cfg.engine} needs a {want} file (microWakeWord: the model's JSON next to its .tflite; "
            f"openWakeWord: the .tflite classifier), got {cfg.model!r}",
            "wake.model",
        )
    if cfg.engine == "microwakeword":
        cutoff, tflite = _description(path)
        _check_model(path.parent / tflite, named_by=path)
    else:
        _check_model(path)
        cutoff = OPENWAKEWORD_DEFAULT_THRESHOLD
    return ModelInfo(cfg.engine, path.stem, str(path), cfg.threshold or cutoff, cfg.verify_threshold or None)


def _file_error(path: Path, e: OSError, named_by: Path | None = None) -> ConfigError:
    if isinstance(e, FileNotFoundError):
        what = f"{named_by} names model file {path}, which" if named_by else f"model file {path}"
        return ConfigError(f"{what} does not exist; check the path", "wake.model")
    return ConfigError(
        f"model file {path} cannot be used: {e.strerror}; give the path of a readable model file", "wake.model"
    )


def _check_model(path: Path, named_by: Path | None = None) -> None:
    """A .tflite the engine opens itself: a regular file of a model's size (opening a FIFO would block)."""
    try:
        check_file(path, MODEL_MAX_BYTES)
    except OSError as e:
        raise _file_error(path, e, named_by) from None


def _description(path: Path) -> tuple[float, str]:
    """A microWakeWord model's JSON: its cutoff and the name of its .tflite (next to it)."""
    try:
        raw = read_file(path, DESCRIPTION_MAX_BYTES)
    except OSError as e:
        raise _file_error(path, e) from None
    try:
        data = json.loads(raw)
        cutoff, tflite = float(data["micro"]["probability_cutoff"]), data["model"]
        if not isinstance(tflite, str) or not tflite:
            raise ValueError("model is not a file name")
        return cutoff, tflite
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ConfigError(
            f"{path} is not a microWakeWord model description ({e}); it needs micro.probability_cutoff "
            "and model (the .tflite file name)",
            "wake.model",
        ) from None


class _MicroScorer:
    def __init__(self, info: ModelInfo) -> None:
        mod = _import_engine("microwakeword")
        if info.path:
            self._model = mod.MicroWakeWord.from_config(info.path)
        else:
            self._model = mod.MicroWakeWord.from_builtin(mod.Model(info.name))
        self._features = mod.MicroWakeWordFeatures()
        self._calls = 0

    def scores(self, pcm: bytes) -> Iterator[float]:
        # The model runs once per `stride` feature windows (3: every 30 ms) and answers 0.0 in
        # between; those are no scores, and would break a run of high ones (core/wakerule.py).
        stride = max(1, int(getattr(self._model, "stride", 1)))
        for features in self._features.process_streaming(pcm):
            prob = self._model.process_streaming_prob(features)
            self._calls += 1
            if prob is not None and self._calls % stride == 0:
                yield float(prob)

    def reset(self) -> None:
        self._features.reset()
        self._model.reset()
        self._calls = 0

    def close(self) -> None:
        self._model.close()


class _OpenScorer:
    """``warm``: reset() keeps the feature pipeline. After a reset openWakeWord's features compute
    embeddings for seconds of zeros (its autofill) before the first real audio: about 1 CPU s here.
    The verifier feeds each time 2 s of held audio after its last 0.5 s of silence, which push the
    old audio out; so it pays that once, here, instead of at every detection."""

    def __init__(self, info: ModelInfo, warm: bool = False) -> None:
        mod = _import_engine("openwakeword")
        if info.path:
            self._model = mod.OpenWakeWord.from_model(info.path)
        else:
            self._model = mod.OpenWakeWord.from_builtin(mod.Model(info.name))
        self._features = mod.OpenWakeWordFeatures.from_builtin()
        self._pending = b""
        self._warm = warm
        if warm:
            for _ in self.scores(bytes(_OWW_CHUNK_FRAMES * FRAME_BYTES)):
                pass

    def scores(self, pcm: bytes) -> Iterator[float]:
        # The melspectrogram model works on 80 ms steps: keep what does not fill one.
        self._pending += pcm
        step = _OWW_CHUNK_FRAMES * FRAME_BYTES
        while len(self._pending) >= step:
            chunk, self._pending = self._pending[:step], self._pending[step:]
            for embeddings in self._features.process_streaming(chunk):
                yield from (float(p) for p in self._model.process_streaming(embeddings))

    def reset(self) -> None:
        self._pending = b""
        if not self._warm:
            self._features.reset()
        self._model.reset()

    def close(self) -> None:
        self._model.close()
        self._features.close()


@dataclass(frozen=True)
class Detection:
    """The wake word ended ``offset_samples`` into the block (the words after it start there)."""

    offset_samples: int
    score: float


def verification(cfg: WakeConfig) -> str | None:
    """Why detections of ``cfg`` cannot be verified by a second engine, or None when they can."""
    if cfg.verify == "off":
        return "off"
    if cfg.engine != "microwakeword":
        return "off (openwakeword is the detector)"
    if cfg.model not in OPENWAKEWORD_MODELS:
        return f"off (openwakeword has no model of {cfg.model!r})"
    if resolve_model(cfg).verify_cutoff is None:
        return "off (not measured for this model; wake.verify_threshold turns it on)"
    try:
        _import_engine("openwakeword")
    except ConfigError as e:
        return f"unavailable ({e})"
    return None


OPENWAKEWORD_MODELS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft", "hey_rhasspy")


class WakeDetector:
    """Feeds blocks to an engine 10 ms at a time; reports a detection at most once per refractory time.

    A detection (:class:`device.core.wakerule.WakeRule`) of microWakeWord is confirmed by
    openWakeWord's model of the same word on the held audio (``wake.verify``): the two engines were
    trained apart and rarely mistake the same near miss. Owned by the controller thread (no locking).
    """

    def __init__(self, cfg: WakeConfig, scorer: Scorer | None = None, verifier: Scorer | None = None) -> None:
        self.cfg = cfg
        self.info = resolve_model(cfg)
        if scorer is None:
            scorer = _MicroScorer(self.info) if cfg.engine == "microwakeword" else _OpenScorer(self.info)
        self._scorer = scorer
        self._rule = WakeRule(self.info.cutoff, 1, cfg.refractory_s)
        self.verify_off = None if verifier is not None else verification(cfg)
        if verifier is None and self.verify_off is None:
            verifier = _OpenScorer(ModelInfo("openwakeword", cfg.model, "", OPENWAKEWORD_DEFAULT_THRESHOLD), warm=True)
        elif self.verify_off is not None and self.verify_off.startswith("unavailable"):
            log.warning("wake word detections are not verified: %s", self.verify_off)
        self._verifier = verifier
        self._held = bytearray()  # the last VERIFY_HELD_S of audio, for the verifier
        self._held_max = 2 * round(VERIFY_HELD_S * CAPTURE_RATE_HZ)
        self.detections = 0
        self.rejected = 0  # detections the verifier did not confirm
        self.peak_score = 0.0  # highest score since the last reset (for logs and tests)

    def process(self, pcm: bytes, captured_at_s: float) -> Detection | None:
        """Feed one block whose last sample was captured at ``captured_at_s``."""
        n = len(pcm) // 2
        start_s = captured_at_s - n / CAPTURE_RATE_HZ
        found: Detection | None = None
        for pos in range(0, n - n % FRAME_SAMPLES, FRAME_SAMPLES):
            frame = pcm[pos * 2:(pos + FRAME_SAMPLES) * 2]
            if self._verifier is not None:
                self._held += frame
                del self._held[: max(0, len(self._held) - self._held_max)]
            for score in self._scorer.scores(frame):
                self.peak_score = max(self.peak_score, score)
                end = pos + FRAME_SAMPLES
                t_s = start_s + end / CAPTURE_RATE_HZ
                if found is None and self._rule.step(score, t_s):
                    if self._confirmed(score):
                        found = Detection(end, score)
                    else:
                        self.rejected += 1
        if found is not None:
            self.detections += 1
            log.info("wake word %r heard (score %.3f)", self.info.name, found.score)
        return found

    def raw_scores(self, pcm: bytes) -> list[float]:
        """The engine's scores for ``pcm`` (10 ms frames), no decision made (``check wake``)."""
        out: list[float] = []
        for pos in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            out.extend(self._scorer.scores(pcm[pos : pos + FRAME_BYTES]))
        return out

    def _confirmed(self, score: float) -> bool:
        """Whether the verifier hears the wake word in the held audio (always, without a verifier)."""
        if self._verifier is None:
            return True
        self._verifier.reset()
        held = bytes(self._held) + bytes(2 * round(VERIFY_PAD_S * CAPTURE_RATE_HZ))
        best = max(self._verifier.scores(held), default=0.0)
        cutoff = OPENWAKEWORD_DEFAULT_THRESHOLD if self.info.verify_cutoff is None else self.info.verify_cutoff
        if best > cutoff:
            return True
        log.info("wake word %r not confirmed (score %.3f, openwakeword %.3f under %g)", self.info.name, score,
                 best, cutoff)
        return False

    def reset(self) -> None:
        """Forget the audio heard so far (a conversation started or ended)."""
        self._scorer.reset()
        self._rule.reset()
        self._held.clear()
        self.peak_score = 0.0

    def close(self) -> None:
        self._scorer.close()
        if self._verifier is not None:
            self._verifier.close()

    def describe(self) -> str:
        source = self.info.path or "bundled"
        verify = (f", verified by openwakeword (cutoff {self.info.verify_cutoff or OPENWAKEWORD_DEFAULT_THRESHOLD:g})"
                  if self._verifier is not None else f", verification {self.verify_off}")
        return f"{self.info.engine} {self.info.name} ({source}), cutoff {self.info.cutoff:g}{verify}"


def describe(cfg: WakeConfig) -> str:
    """One line for ``run --check`` and ``doctor`` (or the reason the engine is unusable)."""
    try:
        info = resolve_model(cfg)
    except ConfigError as e:
        return f"unavailable: {e}"
    off = verification(cfg)
    verify = f"verified by openwakeword (cutoff {info.verify_cutoff:g})" if off is None and info.verify_cutoff \
        else f"verification {off}"
    return (
        f"{info.engine} {info.name} ({info.path or 'bundled'}), cutoff {info.cutoff:g}, {verify}, "
        f"refractory {cfg.refractory_s:g} s"
    )


def hands_free_summary(cfg: Config) -> str:
    """``run --check`` / ``doctor``: the wake word and the microphone processing, or why they cannot run."""
    from device.drivers import dsp

    wake = describe(cfg.wake) if cfg.gate.mode == "wake_word" else f"off (gate.mode = {cfg.gate.mode})"
    ns = dsp.describe(cfg.audio.noise_suppression, cfg.audio.auto_gain_dbfs)
    return f"wake word: {wake}; noise suppression/auto gain: {ns}"
