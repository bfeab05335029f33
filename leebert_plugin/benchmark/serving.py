"""What a service sees: ``EarlyExitClassifier.predict`` from raw text, full depth against early exit.

Per batch size, the same sentences go through ``predict`` (bpe, dictionary, batching, the model,
the labels: everything a caller pays for) at full depth and under the exit policy, interleaved
round by round so that the machine's noise falls on both alike; the median round is reported.
Batch 1 gives the latency of one sentence; larger batches the throughput.
"""
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from leebert_plugin.runtime.devices import Stopwatch
from leebert_plugin.errors import UsageError


@dataclass
class ServingFigures:
    batch_size: int
    ms_per_sentence: Dict[str, float]  # "full depth" / "early exit" -> median ms per sentence
    mean_layers: float  # early exit: mean layers run per sentence

    def sentences_per_second(self, mode: str) -> float:
        return 1000.0 / self.ms_per_sentence[mode]


def measure(clf, sentences: Sequence, batch_size: int, exit_policy: str, threshold: Optional[float],
            patience: int = 1, rounds: int = 5) -> ServingFigures:
    """Median over ``rounds`` of ms per sentence for ``predict`` over ``sentences`` (after one warm-up each)."""
    modes = {"full depth": dict(exit_policy="none"),
             "early exit": dict(exit_policy=exit_policy, threshold=threshold, patience=patience)}
    times: Dict[str, List[float]] = {m: [] for m in modes}
    layers = 0.0
    for mode, kw in modes.items():  # warm-up
        clf.predict(sentences[:batch_size], batch_size=batch_size, **kw)
    for _ in range(rounds):
        for mode, kw in modes.items():
            with Stopwatch(clf.device) as watch:
                out = clf.predict(sentences, batch_size=batch_size, **kw)
            times[mode].append(1000.0 * watch.seconds / len(sentences))
            if mode == "early exit":
                layers = sum(p.layers_run for p in out) / len(out)
    return ServingFigures(batch_size, {m: statistics.median(t) for m, t in times.items()}, layers)


def table(figures: Sequence[ServingFigures], layers: int) -> str:
    lines = ["| batch | full depth: ms / sentence | sentences / s | early exit: ms / sentence | sentences / s "
             "| mean layers | wall-clock speed-up |", "|---|---|---|---|---|---|---|"]
    for f in figures:
        full, early = f.ms_per_sentence["full depth"], f.ms_per_sentence["early exit"]
        lines.append(f"| {f.batch_size} | {full:.2f} | {1000 / full:.0f} | {early:.2f} | {1000 / early:.0f} | "
                     f"{f.mean_layers:.2f} of {layers} | {full / early:.2f}x |")
    return "\n".join(lines)


def read_sentences(path: Path, header: bool, samples: int) -> List[str]:
    """The first ``samples`` sentences of a text file, one a line (a TSV: its first column),
    skipping a header line with ``header`` and blank lines."""
    if not Path(path).is_file():
        raise UsageError(f"{path} does not exist", "pass a text file with one sentence a line")
    lines = Path(path).read_text(encoding="utf-8").splitlines()[1 if header else 0:]
    return [line.split("\t")[0] for line in lines if line.strip()][:samples]
