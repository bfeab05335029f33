"""The benchmark's tables: each method with its seed interval, and paired differences with verdicts.

Methods are compared on the published exit rules; the per-exit calibrated rule is compared with
them within each method (:func:`rule_comparisons`).

Every figure is a test figure at a point chosen on dev (:mod:`leebert_plugin.benchmark.choice`).
A method's cell is ``mean ± half-width`` of the 95% t interval over its seeds; a comparison is the
paired difference ``A - B`` over the seeds both have (same seed: same data order), with its 95% t
interval and, for each seed, the paired bootstrap interval over test examples
(:mod:`leebert_plugin.benchmark.stats`). A winner is named only where the seed interval excludes
0; otherwise the row says ``tie``. A seed where one side never reaches the asked speed-up on dev
makes the interval "not reached" rather than being dropped.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from leebert_plugin.benchmark.ablations import Variant
from leebert_plugin.benchmark.choice import FULL, PER_EXIT_POLICY, At, choose
from leebert_plugin.benchmark.evaluation import GATED_SINCE, VERSION, Outcomes, required_version
from leebert_plugin.benchmark.stats import NOT_REACHED, Interval, paired_bootstrap, seed_interval

METHOD_COLUMNS = (FULL, At("layers", 1.5), At("layers", 2.0), At("layers", 3.0), At("flops", 2.0))


@dataclass
class Run:
    """One finished training run: its figures (``result.json``) and its test outcomes."""

    method: str
    seed: int
    result: Dict
    outcomes: Outcomes

    def index(self, at: At) -> Optional[int]:
        return choose(self.result["points"], at)

    def test(self, at: At, key: str = "test_metric") -> Optional[float]:
        i = self.index(at)
        return None if i is None else self.result["points"][i][key]


# Two seeds give a t interval on one degree of freedom: of zero width when they agree (rt-all's
# LeeBERT - PABEE at 2x came out +0.08 in both of its first two seeds), so no verdict below three.
VERDICT_SEEDS = 3


@dataclass
class Comparison:
    a: str
    a_at: At
    b: str
    b_at: At
    seeds: List[int]
    over_seeds: Interval
    per_seed: List[Interval] = field(default_factory=list)  # the paired bootstrap of each seed

    def too_few_seeds(self) -> bool:
        """Fewer than :data:`VERDICT_SEEDS` seeds reached the point on both sides: no verdict."""
        return self.over_seeds is not NOT_REACHED and len(self.seeds) < VERDICT_SEEDS

    def verdict(self) -> str:
        """``A better``, ``B better`` or ``tie`` from the seed interval; ``not reached`` where a side
        never got that fast on dev in some seed (no verdict, not a tie); ``no verdict`` on fewer
        than :data:`VERDICT_SEEDS` seeds in common."""
        if self.over_seeds is NOT_REACHED:
            return "not reached"
        if self.too_few_seeds():
            return f"no verdict under {VERDICT_SEEDS} seeds"
        side = self.over_seeds.verdict()
        return {"A": f"{self.a} better", "B": f"{self.b} better"}.get(side, "tie")


@dataclass(frozen=True)
class Target:
    """A published-claim target on a paired difference ``a at a_at - b at b_at``: met when the
    interval's lower end is at least ``floor`` and, with ``beat``, the mean at least ``mean_floor``
    and the interval excludes 0."""

    text: str
    a: str
    a_at: At
    b: str
    b_at: At
    floor: float
    beat: bool = False
    mean_floor: float = float("-inf")

    def met(self, iv: Interval) -> bool:
        if iv is NOT_REACHED or iv.low != iv.low:  # NaN: not reached, or one seed only
            return False
        if self.beat and not (iv.excludes_zero() and iv.mean > 0 and iv.mean >= self.mean_floor):
            return False
        return iv.low >= self.floor


COMPARISONS = (
    ("leebert", At("layers", 1.5), "pabee", At("layers", 1.5)),
    ("leebert", At("layers", 2.0), "pabee", At("layers", 2.0)),
    ("leebert", At("layers", 3.0), "pabee", At("layers", 3.0)),  # where the fronts part (issue 38)
    ("leebert", At("layers", 2.0), "deebert", At("layers", 2.0)),
    ("leebert", At("layers", 2.0), "smartbert", At("layers", 2.0)),
    ("smartbert", At("layers", 2.0), "pabee", At("layers", 2.0)),
    ("leebert", FULL, "full_ft", FULL),
    ("leebert", At("layers", 1.9), "full_ft", FULL),
    ("pabee", At("layers", 1.5), "full_ft", FULL),
    ("pabee", At("layers", 2.0), "full_ft", FULL),
    ("deebert", At("layers", 2.0), "full_ft", FULL),
    ("smartbert", At("flops", 2.0), "full_ft", FULL),
    ("smartbert", At("flops", 2.0), "full_ft_smartbert", FULL),  # full FT trained as SmartBERT's backbone
)
TARGETS = (
    Target("LeeBERT at >= 1.9x within 0.3 points of full fine-tuning (interval's low end >= -0.3)",
           "leebert", At("layers", 1.9), "full_ft", FULL, floor=-0.3),
    Target("LeeBERT at least 0.5 points above PABEE at 2x, interval excluding 0",
           "leebert", At("layers", 2.0), "pabee", At("layers", 2.0), floor=0.0, beat=True, mean_floor=0.5),
    Target("LeeBERT at least 1 point above PABEE at 3x, interval excluding 0",
           "leebert", At("layers", 3.0), "pabee", At("layers", 3.0), floor=0.0, beat=True, mean_floor=1.0),
    Target("LeeBERT at least 0.5 points above DeeBERT at 2x, interval excluding 0",
           "leebert", At("layers", 2.0), "deebert", At("layers", 2.0), floor=0.0, beat=True, mean_floor=0.5),
    Target("SmartBERT at >= 2x FLOPs with at most 1 point of drop from full fine-tuning trained as its backbone "
           "(full_ft_smartbert; interval's low end >= -1)",
           "smartbert", At("flops", 2.0), "full_ft_smartbert", FULL, floor=-1.0),
)


def method_interval(runs: Sequence[Run], at: At, key: str = "test_metric") -> Interval:
    return seed_interval([r.test(at, key) for r in runs])


def compare(runs_a: Dict[int, Run], runs_b: Dict[int, Run], a_at: At, b_at: At,
            reps: int = 2000) -> Comparison:
    """``A at a_at - B at b_at`` (test accuracy) over the seeds both have, paired by seed, with each
    seed's paired bootstrap over the test examples (``reps`` resamples; 0: none, ``per_seed`` empty)."""
    seeds = sorted(set(runs_a) & set(runs_b))
    a_name = runs_a[seeds[0]].method if seeds else ""
    b_name = runs_b[seeds[0]].method if seeds else ""
    diffs, boots = [], []
    for s in seeds:
        ra, rb = runs_a[s], runs_b[s]
        ia, ib = ra.index(a_at), rb.index(b_at)
        if ia is None or ib is None:
            diffs.append(None)
            if reps:
                boots.append(NOT_REACHED)
            continue
        diffs.append(ra.result["points"][ia]["test_metric"] - rb.result["points"][ib]["test_metric"])
        if ra.outcomes.ids.shape != rb.outcomes.ids.shape or (ra.outcomes.ids != rb.outcomes.ids).any():
            raise ValueError(f"{a_name} and {b_name} seed {s} were tested on different examples: "
                             "compare runs of the same data folder")
        if reps:
            boots.append(paired_bootstrap(ra.outcomes.correct[ia], rb.outcomes.correct[ib], reps=reps, seed=s))
    return Comparison(a_name, a_at, b_name, b_at, seeds, seed_interval(diffs), boots)


def realised_speedup(runs: Sequence[Run], at: At) -> str:
    """The layer speed-up the point chosen on dev at ``at`` reaches on test, as ``L / m`` with ``m``
    the mean over seeds of the layers run per sample (and its 95% interval in layers).

    Averaging layers, not speed-ups: a speed-up is a ratio, and one seed whose gates skip nearly
    every layer (0.01 layers a sample: 549x) would otherwise stand for the whole method."""
    return _speedup_cell(runs, [r.test(at, "test_speedup") for r in runs])


def _layers_run(runs: Sequence[Run], speedups: Sequence[Optional[float]]) -> Interval:
    """The layers a sample runs, ``L / speed-up``, over the seeds' ``speedups`` (None: not reached)."""
    return seed_interval([r.result["layers"] / s if s else None for r, s in zip(runs, speedups)])


def _speedup_cell(runs: Sequence[Run], speedups: Sequence[Optional[float]]) -> str:
    """``L / m (m ± h layers)`` over the seeds' ``speedups`` (None: not reached), m their mean layers."""
    layers = _layers_run(runs, speedups)
    if math.isnan(layers.mean):
        return "not reached"
    return f"{runs[0].result['layers'] / layers.mean:.2f}x ({layers.as_value()} layers)"


def mean_point(runs: Sequence[Run], at: At) -> Optional[Tuple[float, Interval]]:
    """Where a method stands at ``at`` over its seeds, or None when some seed does not reach it on
    dev: the test layer speed-up ``L / m`` (``m`` the mean layers run, as :func:`realised_speedup`)
    and the test accuracy's interval over the seeds."""
    accuracy = method_interval(runs, at)
    if math.isnan(accuracy.mean):  # some seed did not reach it
        return None
    return runs[0].result["layers"] / _layers_run(runs, [r.test(at, "test_speedup") for r in runs]).mean, accuracy


def method_table(runs: Dict[str, List[Run]]) -> List[str]:
    heads = [f"test acc at {at}" for at in METHOD_COLUMNS]
    lines = ["| method | seeds | " + " | ".join(heads) + " | test layer speed-up at 2x | oracle speed-up (test) "
             "| train min/run |", "|---" * (len(heads) + 5) + "|"]
    for method, rs in runs.items():
        if not rs:
            continue
        cells = [method_interval(rs, at).as_value() for at in METHOD_COLUMNS]
        realised = realised_speedup(rs, At("layers", 2.0))
        oracle = _speedup_cell(rs, [r.result["test_oracle"]["layer_speedup"] for r in rs])
        minutes = sum(r.result.get("train_seconds", 0.0) for r in rs) / len(rs) / 60
        lines.append(f"| {method} | {len(rs)} | " + " | ".join(cells) + f" | {realised} | {oracle} | {minutes:.1f} |")
    return lines


def comparison_table(comparisons: Sequence[Comparison]) -> List[str]:
    lines = ["| A - B | at | difference, 95% interval over seeds | verdict | paired bootstrap per seed "
             "(test examples) |", "|---|---|---|---|---|"]
    for c in comparisons:
        boots = "; ".join(f"s{s}: {iv}" for s, iv in zip(c.seeds, c.per_seed))
        lines.append(f"| {c.a} - {c.b} | {_at_label(c.a_at, c.b_at)} | {c.over_seeds} | {c.verdict()} | {boots} |")
    return lines


def _at_label(a_at: At, b_at: At) -> str:
    return str(a_at) if a_at == b_at else f"{a_at} vs {b_at}"


def _with_seeds(value: str, n: int) -> str:
    return value if n == 1 else f"{value} ({n} seeds)"  # one seed's value already says n=1


def across_tables(columns: Dict[str, Dict[str, List[Run]]]) -> List[str]:
    """Several matrices side by side, one column each (records folders of one data set at other
    training sizes, say): each method's test accuracy at full depth, then every comparison of
    :data:`COMPARISONS` as the paired difference over that column's seeds, its 95% interval and
    verdict (no verdict on fewer than ``VERDICT_SEEDS`` seeds in common), and under the tables
    which evaluation scored each column's runs. Runs are paired within a column only: another size is another
    experiment, so a trend across columns is read from intervals that each stand alone. The table
    holds one cell per column, so no per-seed bootstrap is computed."""
    names = list(columns)
    head = ["| " + " | ".join(["method", "at", *names]) + " |", "|---" * (len(names) + 2) + "|"]
    named = dict.fromkeys(m for runs in columns.values() for m in runs)  # the columns' order, first seen first
    methods = [m for m in named if any(runs.get(m) for runs in columns.values())]
    lines = ["Test accuracy at full depth (mean ± half-width of the 95% interval over seeds; seeds):", "", *head]
    for method in methods:
        cells = [_with_seeds(method_interval(runs[method], FULL).as_value(), len(runs[method])) if runs.get(method)
                 else "-" for runs in columns.values()]
        lines.append(f"| {method} | {FULL} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences A - B (test accuracy points; seeds paired within each column):", "",
              head[0].replace("| method |", "| A - B |", 1), head[1]]
    for a, a_at, b, b_at in COMPARISONS:
        cells = []
        for runs in columns.values():
            if not (runs.get(a) and runs.get(b)):
                cells.append("-")
                continue
            c = compare({r.seed: r for r in runs[a]}, {r.seed: r for r in runs[b]}, a_at, b_at, reps=0)
            if len(c.seeds) < 2:  # nothing to pair, or one seed (its value says n=1): no verdict
                cells.append(str(c.over_seeds) if c.seeds else "no seed in common")
            elif c.over_seeds is NOT_REACHED:
                cells.append(f"{c.over_seeds} ({len(c.seeds)} seeds)")
            else:
                cells.append(f"{c.over_seeds} ({len(c.seeds)} seeds; {c.verdict()})")
        lines.append(f"| {a} - {b} | {_at_label(a_at, b_at)} | " + " | ".join(cells) + " |")
    lines += ["", *(f"{name}: {evaluation_line(runs)}" for name, runs in columns.items())]
    return lines


ABLATION_POINTS = (FULL, At("layers", 2.0), At("layers", 3.0))  # 3x: where LeeBERT's and PABEE's fronts part


def ablation_comparisons(by_seed: Dict[str, Dict[int, Run]], variants: Sequence[Variant],
                         reps: int = 2000) -> List[Comparison]:
    """Each variant against its method at the recipe's defaults, at full depth, 2x and 3x."""
    return [compare(by_seed[v.name], by_seed[v.method], at, at, reps) for v in variants
            if v.name in by_seed and v.method in by_seed for at in ABLATION_POINTS]


RULE_POINTS = (At("layers", 1.5), At("layers", 2.0), At("layers", 3.0))


def rule_comparisons(by_seed: Dict[str, Dict[int, Run]], reps: int = 2000) -> List[Comparison]:
    """For each method whose runs have per-exit points: the per-exit calibrated rule against the best
    published rule of the same runs, each chosen on dev at the same speed-up (paired by seed and
    by example: the same model answers both)."""
    out = []
    for method, runs in by_seed.items():
        if not all(any(p["policy"] == PER_EXIT_POLICY for p in r.result["points"]) for r in runs.values()):
            continue
        for at in RULE_POINTS:
            c = compare(runs, runs, At(at.axis, at.speedup, "per_exit"), at, reps)
            c.a, c.b = f"{method} per-exit", f"{method} published"
            out.append(c)
    return out


def evaluation_line(runs: Dict[str, List[Run]]) -> str:
    """Which evaluation scored the runs, naming any run an older one scored (a record that was not
    scored again: neither its traces nor its checkpoint were at hand, or it was not among the runs
    the command evaluated): its grid differs from the others', so its comparisons are not like for
    like."""
    older = [f"{r.method} seed {r.seed} (evaluation {r.result.get('evaluation', 1)})"
             for rs in runs.values() for r in rs if r.result.get("evaluation", 1) < required_version(r.result)]
    line = f"Evaluation {VERSION} (runs with skip gates: {GATED_SINCE} or later)."
    if older:
        line += (" **Scored by an older evaluation, on another grid (not scored again): "
                 + ", ".join(older) + "; their comparisons are not like for like.**")
    return line


def summary(runs: Dict[str, List[Run]], header: str, reps: int = 2000, variants: Sequence[Variant] = ()) -> str:
    """The markdown summary: the method table, the paired differences, the target verdicts, and
    with ``variants``, each ablation variant against its method."""
    by_seed = {m: {r.seed: r for r in rs} for m, rs in runs.items() if rs}
    comparisons = [compare(by_seed[a], by_seed[b], a_at, b_at, reps) for a, a_at, b, b_at in COMPARISONS
                   if a in by_seed and b in by_seed]
    lines = [header, "", evaluation_line(runs), "", *method_table(runs), "",
             "Paired differences A - B (test accuracy points; same seeds; each side's point chosen on dev):", "",
             *comparison_table(comparisons), "", "Targets:",
             *target_lines(by_seed, [(t, t.a) for t in TARGETS], reps)]
    rules = rule_comparisons(by_seed, reps)
    if rules:
        lines += ["", "The per-exit rule calibrated on dev against the best published rule (global normalised-entropy "
                      "threshold or patience) of the same runs, each chosen on dev (test accuracy points):", "",
                  *comparison_table(rules)]
    if variants:
        lines += ["", "Ablations: each variant - its method at the recipe's defaults (test accuracy points; "
                      "same seeds; points chosen on dev):", "",
                  *comparison_table(ablation_comparisons(by_seed, variants, reps))]
        swapped = target_lines(by_seed, [(t, v.name) for v in variants for t in TARGETS if t.a == v.method], reps)
        if swapped:
            lines += ["", f"Targets with a variant in its method's place (one of the {len(variants)} variants "
                          "tried: a variant that meets a target its method misses is a lead to confirm on other "
                          "seeds, not yet a result):", *swapped]
    return "\n".join(lines) + "\n"


def target_lines(by_seed: Dict[str, Dict[int, Run]], checks: Sequence, reps: int) -> List[str]:
    """One line per (target, runs standing for its method ``a``): the paired interval and the verdict."""
    lines = []
    for t, a in checks:
        if a in by_seed and t.b in by_seed:
            c = compare(by_seed[a], by_seed[t.b], t.a_at, t.b_at, reps)
            who = "" if a == t.a else f"{a} in place of {t.a}: "
            if c.too_few_seeds():
                outcome = f"no verdict under {VERDICT_SEEDS} seeds"
            else:
                outcome = "met" if t.met(c.over_seeds) else "MISSED"  # not reached in some seed: missed
                mean = c.over_seeds.mean if c.over_seeds is not NOT_REACHED else float("nan")
                if outcome == "MISSED" and mean < t.mean_floor and f"{mean:.2f}" == f"{t.mean_floor:.2f}":  # shown as the floor
                    outcome += f" (mean {mean:.4f}, under {t.mean_floor:g})"
            lines.append(f"- {who}{t.text}: {c.over_seeds} over {len(c.seeds)} seeds -> {outcome}")
    return lines
