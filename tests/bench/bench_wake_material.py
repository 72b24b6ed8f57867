"""Wake-word benchmark on material that is not one synthesizer (tests/wakematerial.py).

Per engine and bundled model: detection rate per condition (10 voices of espeak-ng, flite and
festival x 3 speeds/pitches x 8 conditions: clean, quiet, loud, reverb, pink 10 dB, four-talker
babble 20/10/5 dB), and false accepts per hour on ordinary speech and on near-miss speech
(phrases built to sound like the wake words), each detector fed 10 ms frames as the daemon feeds
it. Scores are computed once per clip and cached (``<cache>/wake-material/traces``); the decision
rule (cutoff, persistence: device/core/wakerule.py) is then swept over the cached scores, so the
curve of detection against false accepts costs nothing more.

Run: ``.venv/bin/python tests/bench/bench_wake_material.py [--engines microwakeword,openwakeword]``
(the first run synthesizes and scores everything: minutes of CPU; later runs read the cache).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device.core.config import WakeConfig  # noqa: E402
from device.core.wakerule import WakeRule  # noqa: E402
from device.drivers import wake  # noqa: E402
from tests import wakematerial as m  # noqa: E402

MODELS = {
    "microwakeword": ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft"),
    "openwakeword": ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft", "hey_rhasspy"),
}
STEP_S = {"microwakeword": 0.03, "openwakeword": 0.025}  # measured: audio seconds per score
MATERIAL_VERSION = "2"  # bump when wakematerial.py changes what it makes
CUTOFFS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
CONFIRM = (1, 2, 3, 5, 8, 12)


@dataclass(frozen=True)
class Trace:
    """A detector's scores over one piece of audio: ``scores[i]`` ends at ``(i + 1) * step_s``."""

    scores: np.ndarray
    step_s: float


def _scorer(engine: str, model: str) -> wake.Scorer:
    info = wake.resolve_model(WakeConfig(engine=engine, model=model))  # type: ignore[arg-type]
    return wake._MicroScorer(info) if engine == "microwakeword" else wake._OpenScorer(info)


def score(scorer: wake.Scorer, pcm: bytes) -> np.ndarray:
    """Scores of ``pcm`` fed 10 ms at a time, as :class:`device.drivers.wake.WakeDetector` feeds it."""
    out: list[float] = []
    for pos in range(0, len(pcm) - wake.FRAME_BYTES + 1, wake.FRAME_BYTES):
        out.extend(scorer.scores(pcm[pos : pos + wake.FRAME_BYTES]))
    return np.asarray(out, dtype=np.float32)


def _cache_key(*parts: str) -> Path:
    key = hashlib.sha1("|".join((MATERIAL_VERSION, *parts)).encode()).hexdigest()[:16]
    return m.CACHE / "traces" / f"{key}.npz"


def positive_traces(engine: str, model: str, conditions: Sequence[str] = m.CONDITIONS,
                    voices: Sequence[m.Voice] = m.VOICES,
                    variants: Sequence[tuple[float, int]] = m.VARIANTS) -> list[tuple[m.Clip, np.ndarray]]:
    """Each positive clip with its scores (a fresh detector per clip); cached."""
    path = _cache_key("pos", engine, model, ",".join(conditions), ",".join(map(str, voices)), repr(variants))
    clips = list(m.positives(model, tuple(conditions), tuple(voices), tuple(variants)))
    if path.exists():
        data = np.load(path)
        return [(c, data[f"c{i}"]) for i, c in enumerate(clips)]
    scorer = _scorer(engine, model)
    traces = []
    try:
        for c in clips:
            scorer.reset()
            traces.append(score(scorer, m.to_pcm(c.audio)))
    finally:
        scorer.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{f"c{i}": t for i, t in enumerate(traces)})
    return list(zip(clips, traces, strict=True))


def negative_trace(engine: str, model: str, kind: str, stream: np.ndarray, tag: str) -> np.ndarray:
    """Scores over one negative stream (one detector, never reset, as a kiosk idles); cached."""
    path = _cache_key("neg", engine, model, kind, tag)
    if path.exists():
        return np.load(path)["t"]
    scorer = _scorer(engine, model)
    try:
        t = score(scorer, m.to_pcm(stream))
    finally:
        scorer.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, t=t)
    return t


def decisions(trace: np.ndarray, step_s: float, cutoff: float, confirm: int, refractory_s: float = 2.0) -> list[float]:
    """Times of the detections :class:`WakeRule` makes on ``trace``."""
    rule = WakeRule(cutoff, confirm, refractory_s)
    hits = np.nonzero(trace > cutoff)[0]
    out: list[float] = []
    last = -2
    for i in hits:  # only steps over the cutoff can complete a detection; a gap resets the run
        if i != last + 1:
            rule.step(0.0, 0.0)
        last = i
        t = (int(i) + 1) * step_s
        if rule.step(float(trace[i]), t):
            out.append(t)
    return out


@dataclass(frozen=True)
class Figures:
    detected: dict[str, tuple[int, int]]  # condition → (heard, clips)
    false_ordinary: int
    false_near: int
    ordinary_h: float
    near_h: float

    @property
    def rate(self) -> float:
        heard = sum(h for h, _ in self.detected.values())
        return heard / max(1, sum(n for _, n in self.detected.values()))

    def per_hour(self, kind: str) -> float:
        return (self.false_ordinary / self.ordinary_h) if kind == "ordinary" else (self.false_near / self.near_h)


def step_of(trace: np.ndarray, audio_s: float) -> float:
    """Seconds of audio per score: measured, not assumed (openWakeWord answers about every 25 ms
    once warmed up, microWakeWord every 30 ms)."""
    return audio_s / max(1, len(trace))


def figures(pos: Iterable[tuple[m.Clip, np.ndarray]], neg: dict[str, np.ndarray], cutoff: float,
            confirm: int, hours: dict[str, float]) -> Figures:
    detected: dict[str, list[int]] = {}
    for clip, trace in pos:
        row = detected.setdefault(clip.cond, [0, 0])
        row[0] += bool(decisions(trace, step_of(trace, len(clip.audio) / m.RATE_HZ), cutoff, confirm))
        row[1] += 1
    fa = {k: len(decisions(t, step_of(t, hours[k] * 3600), cutoff, confirm)) for k, t in neg.items()}
    return Figures({k: (v[0], v[1]) for k, v in detected.items()}, fa["ordinary"], fa["near_miss"],
                   hours["ordinary"], hours["near_miss"])


VERIFY_HELD_S = 2.0  # the audio the second engine hears: the last 2 s up to the detection...
VERIFY_PAD_S = 0.5  # ... then this much silence, which flushes openWakeWord's feature pipeline


def verify_score(scorer: wake.Scorer, audio: np.ndarray, t_s: float) -> float:
    """The second engine's best score on the held audio of a detection at ``t_s`` (as
    :class:`device.drivers.wake.WakeDetector` verifies: fresh engine, held audio, silence)."""
    held = audio[max(0, int((t_s - VERIFY_HELD_S) * m.RATE_HZ)) : int(t_s * m.RATE_HZ)]
    scorer.reset()
    trace = score(scorer, m.to_pcm(held) + bytes(2 * int(VERIFY_PAD_S * m.RATE_HZ)))
    return float(trace.max()) if len(trace) else 0.0


def verified_figures(model: str, streams: dict[str, np.ndarray], hours: dict[str, float],
                     cutoffs: Sequence[float], verify_cutoffs: Sequence[float]) -> list[str]:
    """microWakeWord detections confirmed by openWakeWord on the held audio: the curve."""
    pos = positive_traces("microwakeword", model)
    neg = {k: negative_trace("microwakeword", model, k, v, "all") for k, v in streams.items()}
    path = _cache_key("verify-warm", model, repr(VERIFY_HELD_S), repr(VERIFY_PAD_S))
    cache: dict[str, float] = {}
    if path.exists():
        cache = {k: float(v) for k, v in np.load(path).items()}
    info = wake.resolve_model(WakeConfig(engine="openwakeword", model=model))
    scorer = wake._OpenScorer(info, warm=True)  # as the detector's verifier
    lines = ["  mww cutoff  oww cutoff  detected  FA/h ordinary  FA/h near-miss  (verifications run)"]
    try:
        for c1 in cutoffs:
            pos_scores: list[list[float]] = []
            for i, (clip, trace) in enumerate(pos):
                times = decisions(trace, step_of(trace, len(clip.audio) / m.RATE_HZ), c1, 1)
                row = []
                for t in times:
                    key = f"p{i}_{t:.2f}"
                    if key not in cache:
                        cache[key] = verify_score(scorer, clip.audio, t)
                    row.append(cache[key])
                pos_scores.append(row)
            neg_scores: dict[str, list[float]] = {}
            for kind, trace in neg.items():
                times = decisions(trace, step_of(trace, hours[kind] * 3600), c1, 1)
                out = []
                for t in times:
                    key = f"{kind}_{t:.2f}"
                    if key not in cache:
                        cache[key] = verify_score(scorer, streams[kind], t)
                    out.append(cache[key])
                neg_scores[kind] = out
            runs = sum(len(r) for r in pos_scores) + sum(len(v) for v in neg_scores.values())
            for c2 in verify_cutoffs:
                rate = sum(any(x > c2 for x in r) for r in pos_scores) / len(pos)
                fa = {k: sum(x > c2 for x in v) / hours[k] for k, v in neg_scores.items()}
                lines.append(f"  {c1:10.2f}  {c2:10.2f}  {rate:8.1%}  {fa['ordinary']:13.1f}  "
                             f"{fa['near_miss']:14.1f}  ({runs})")
    finally:
        scorer.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{k: np.float32(v) for k, v in cache.items()})
    return lines


def machine() -> str:
    return f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="microwakeword,openwakeword")
    p.add_argument("--models", default="", help="comma list (default: every bundled model)")
    p.add_argument("--verify", default="hey_jarvis",
                   help="comma list of models to measure microWakeWord + openWakeWord verification for ('' none)")
    args = p.parse_args(argv)
    missing = m.missing_tools()
    if missing:
        print(f"needs {', '.join(missing)}: apt-get install espeak-ng flite festival festvox-kallpc16k "
              "festvox-kdlpc16k festvox-us-slt-hts sox", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    streams = {"ordinary": m.negatives("ordinary"), "near_miss": m.negatives("near_miss")}
    hours = {k: len(v) / m.RATE_HZ / 3600 for k, v in streams.items()}
    print(f"negatives: ordinary {hours['ordinary'] * 60:.1f} min, near-miss {hours['near_miss'] * 60:.1f} min "
          "(clean, pink 10 dB, babble 10 dB in turn)")
    for engine in args.engines.split(","):
        for model in MODELS[engine]:
            if args.models and model not in args.models.split(","):
                continue
            info = wake.resolve_model(WakeConfig(engine=engine, model=model))  # type: ignore[arg-type]
            pos = positive_traces(engine, model)
            neg = {k: negative_trace(engine, model, k, v, "all") for k, v in streams.items()}
            base = figures(pos, neg, info.cutoff, 1, hours)
            print(f"\n== {engine} {model}: {len(pos)} positives; the shipped cutoff {info.cutoff:g}, 1 step, "
                  "no verification")
            print("  " + "  ".join(f"{c} {h}/{n}" for c, (h, n) in base.detected.items()))
            print(f"  detected {base.rate:.1%}; false accepts/h ordinary {base.per_hour('ordinary'):.1f}, "
                  f"near-miss {base.per_hour('near_miss'):.1f}")
            print("  cutoff confirm  detected  FA/h ordinary  FA/h near-miss")
            for cutoff in CUTOFFS:
                for confirm in CONFIRM:
                    f = figures(pos, neg, cutoff, confirm, hours)
                    print(f"  {cutoff:6.2f} {confirm:7d}  {f.rate:8.1%}  {f.per_hour('ordinary'):13.1f}  "
                          f"{f.per_hour('near_miss'):14.1f}", flush=True)
    for model in filter(None, args.verify.split(",")):
        print(f"\n== microwakeword {model} verified by openwakeword {model} on the held audio "
              f"({VERIFY_HELD_S:g} s + {VERIFY_PAD_S:g} s of silence)")
        for line in verified_figures(model, streams, hours, (0.3, 0.5, 0.7, 0.85, 0.97),
                                     (0.0, 0.2, 0.3, 0.5, 0.7, 0.9)):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
