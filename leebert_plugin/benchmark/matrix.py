"""The method x seed matrix of a benchmark setting: train each run once, evaluate it, reuse it.

Runs are trained seed by seed (every method, and every ablation variant asked for, once before the
next seed), so a matrix stopped early still holds complete pairs. A variant
(:mod:`leebert_plugin.benchmark.ablations`) trains in its own folder beside its method's runs. A run is finished when ``OUT/<method>/seed<k>/result.json``
and ``outcomes.npz`` exist; it is then reused, never retrained. A run killed mid-training resumes
from its own ``checkpoint_last.pt`` (:func:`leebert_plugin.benchmark.recipe.overrides`). A
finished run trained with other ``--override`` values, or under another budget
(:meth:`Matrix.budget_record`), is refused, not mixed in.

Seeds are paired across methods: seed ``k`` gives every method the same data order (fairseq's
batches are shuffled by ``common.seed`` and the epoch), and the same initial exits where the
method's exits have the same shapes (PABEE's and LeeBERT's, built the same way after the same
encoder).
"""
import csv
import io
import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from leebert_plugin.benchmark.ablations import Variant
from leebert_plugin.benchmark.choice import RULES, At, choose
from leebert_plugin.benchmark.evaluation import (
    VERSION, Outcomes, evaluate, required_version, score_traces, traces_of,
)
from leebert_plugin.benchmark.gate_diagnostics import stage1_diagnostics
from leebert_plugin.benchmark.recipe import METHODS, Budget, overrides as recipe_overrides, with_overrides
from leebert_plugin.benchmark.report import Run
from leebert_plugin.benchmark.weights import WEIGHTS, read_weights, write_weights
from leebert_plugin.fairseq_patches.checkpoint_files import is_intact
from leebert_plugin.runtime.devices import fairseq_env
from leebert_plugin.runtime.outputs import atomic_write, write_text
from leebert_plugin.errors import UsageError
from leebert_plugin.exits.evaluate import TRACE_FORMAT, load_traces, save_traces, trace_format
from leebert_plugin.runtime.launch import ROOT, train_with_progress

BIN = Path(sys.executable).parent
TRACES = "traces.npz"  # a run's dev and test traces (runs without gates): scored again without the checkpoint
MISMATCH = "traces.mismatch"  # the evaluation under which a record's checkpoint did not reproduce it
LAUNCH = "launch.json"  # the overrides and budget a run was first launched with: a resumed run keeps them

DATASETS = {"rt": "rt-bin", "20ng": "20ng-bin"}  # folders written by scripts/prepare_offline_benchmark.sh
SIZES = {"1k": "-1k", "3k": "-3k", "all": ""}
SETTINGS = {  # training-set size, epochs
    "reduced": ("1k", 2),
    "medium": ("3k", 2),
    "full": ("all", 3),
}
POINT_COLUMNS = ("policy", "threshold", "patience", "thresholds", "dev_metric", "dev_speedup", "dev_flops_speedup",
                 "test_metric", "test_speedup", "test_flops_speedup")


@dataclass
class Matrix:
    """One setting's runs: what to train (``methods`` x ``seeds`` on ``data``) and where.

    ``methods`` names entries of ``METHODS`` or of ``variants`` (ablations: a method with overrides)."""

    data: Path
    out: Path
    methods: Sequence[str]
    seeds: Sequence[int]
    budget: Budget
    train_size: int
    arch: str
    layers: int
    restore: Optional[str]
    device: torch.device
    extra: Sequence[str] = field(default_factory=list)  # [METHOD:]KEY=VALUE overrides
    num_classes: int = 2
    variants: Mapping[str, Variant] = field(default_factory=dict)

    def method_of(self, name: str) -> str:
        return self.variants[name].method if name in self.variants else name

    def save_dir(self, method: str, seed: int) -> Path:
        return self.out / method / f"seed{seed}"

    def overrides_for(self, name: str) -> List[str]:
        """The overrides that set run ``name`` apart: its variant's, then the extra ones that apply to
        its method (unprefixed ones and ``method:``-prefixed ones, prefix removed)."""
        method = self.method_of(name)
        out = list(self.variants[name].overrides) if name in self.variants else []
        for ov in self.extra:
            prefix, _, rest = ov.partition(":")
            if "=" in prefix or not rest:  # no method prefix (a ':' may sit in the value)
                out.append(ov)
            elif prefix == method:
                out.append(rest)
        return out

    def budget_record(self, name: str) -> Dict:
        """What run ``name`` of this matrix is launched with besides its overrides, as ``result.json``
        records it (``budget``): the budget's fields that reach its method (``Budget.reaching``: not
        SmartBERT's exit pooling), the data folder's name, its number of classes and training-set
        size, the architecture and whether it starts from a pretrained encoder. Not the paths of the
        data or the encoder: they differ between machines. A variant's overrides may replace one of
        these values (``leebert-cls``); they are recorded beside it."""
        return {**self.budget.reaching(self.method_of(name), self.layers), "data": self.data.name, "num_classes": self.num_classes,
                "train_size": self.train_size, "arch": self.arch, "pretrained": self.restore is not None}

    def launched_as(self, name: str) -> Dict:
        """What run ``name`` is launched with: its overrides and budget (``launch.json``, and the
        same two keys of ``result.json``)."""
        return {"overrides": self.overrides_for(name), "budget": self.budget_record(name)}

    def command(self, name: str, seed: int) -> List[str]:
        method = self.method_of(name)
        o = recipe_overrides(method, self.data, self.save_dir(name, seed), seed, self.train_size, self.budget,
                             self.arch, self.restore, self.layers, self.device, num_classes=self.num_classes)
        o = with_overrides(o, self.overrides_for(name))
        return [str(BIN / "fairseq-hydra-train"), "--config-dir", "configs", "--config-name",
                METHODS[method]["config"], *o]


def check_overrides(extra: Sequence[str]) -> None:
    for ov in extra:
        prefix, _, rest = ov.partition(":")
        if "=" not in prefix and rest and prefix not in METHODS:
            raise UsageError(f"--override {ov}: unknown method {prefix!r}",
                             f"use one of {', '.join(METHODS)} as the prefix, or no prefix")


def train(m: Matrix, method: str, seed: int) -> float:
    """One fairseq-hydra-train run with a progress bar; its wall-clock seconds."""
    save = m.save_dir(method, seed)
    updates = m.budget.for_method(m.method_of(method)).updates(m.train_size)
    code, seconds = train_with_progress(m.command(method, seed), save / "train.log", updates,
                                        f"{method} seed {seed}", fairseq_env(m.device), cwd=ROOT)
    if code != 0:
        tail = "\n".join((save / "train.log").read_text().splitlines()[-15:])
        raise RuntimeError(f"{tail}\nbenchmark: training {method} seed {seed} failed (log: {save / 'train.log'})")
    return seconds


def _read_run(save: Path, name: str, seed: int) -> Optional[Run]:
    """The run recorded in ``save`` (``result.json`` and ``outcomes.npz``), or None when it is not finished."""
    done, outcomes = save / "result.json", save / "outcomes.npz"
    if not (done.is_file() and outcomes.is_file()):
        return None
    return Run(name, seed, json.loads(done.read_text()), Outcomes.load(outcomes))


def mismatch(m: Matrix, name: str, recorded: Mapping) -> Optional[str]:
    """Why a run recorded under ``recorded`` (its ``overrides`` and ``budget``, as ``result.json``
    and ``launch.json`` hold them) is not run ``name`` of ``m`` as ``m`` would launch it now: other
    overrides, or budget keys whose values differ; None when it is. Budget keys the record does
    not hold are not compared (:func:`unrecorded`): a record older than a key is taken as ``m``'s."""
    mine = m.overrides_for(name)
    if recorded.get("overrides", []) != mine:
        return f"overrides {recorded.get('overrides', [])}, not {mine}"
    budget, now = recorded.get("budget") or {}, m.budget_record(name)
    differ = [f"{k} {budget[k]!r}, not {v!r}" for k, v in now.items() if k in budget and budget[k] != v]
    return f"another budget ({'; '.join(differ)})" if differ else None


def unrecorded(m: Matrix, name: str, recorded: Mapping) -> List[str]:
    """The budget keys of run ``name`` of ``m`` that ``recorded`` does not hold (all of them: a
    record older than budgets)."""
    budget = recorded.get("budget") or {}
    return [k for k in m.budget_record(name) if k not in budget]


def finished(m: Matrix, method: str, seed: int) -> Optional[Run]:
    """The finished run, or None; a run trained under other overrides or another budget is refused."""
    run = _read_run(m.save_dir(method, seed), method, seed)
    why = None if run is None else mismatch(m, method, run.result)
    if why:
        raise UsageError(f"{m.save_dir(method, seed) / 'result.json'} was trained with {why}",
                         "pass --out to a new folder, or the --override values and budget it was trained with")
    return run


def claim_launch(m: Matrix, name: str, seed: int, log: Callable[[str], None]) -> None:
    """Before training run ``name`` seed ``seed``: a first launch writes ``launch.json``; a run that
    resumes (fairseq goes on from its ``checkpoint_last.pt``) must be launched as it first was, or
    it would end as a mix of two budgets recorded as the second. A checkpoint without
    ``launch.json`` (a run started before launches were recorded) is resumed with a line saying so."""
    save = m.save_dir(name, seed)
    path = save / LAUNCH
    if path.is_file():
        why = mismatch(m, name, json.loads(path.read_text()))
        if why:
            raise UsageError(f"{save} was launched with {why} and stopped before it finished",
                             f"relaunch it with those values, or delete {save} to train it afresh")
        return
    if (save / "checkpoint_last.pt").is_file():
        log(f"benchmark: {name} seed {seed}: resuming a run launched before launches were recorded: "
            "taken as launched under this matrix's budget")
    atomic_write(str(path), lambda f: f.write(json.dumps(m.launched_as(name), indent=1).encode()))


def read_records(out: Path) -> Dict[str, List[Run]]:
    """Every finished run in the records folder ``out`` (``<name>/seed<k>/`` with ``result.json``
    and ``outcomes.npz``), by name and by seed, read as they are: nothing trained or scored again."""
    found = sorted((save.parent.name, int(match.group(1)), save) for save in out.glob("*/seed*")
                   if (match := re.fullmatch(r"seed([0-9]+)", save.name)))
    runs: Dict[str, List[Run]] = {}
    for name, seed, save in found:
        run = _read_run(save, name, seed)
        if run is not None:
            runs.setdefault(name, []).append(run)
    return runs


def across_columns(outs: Sequence[Path], methods: Sequence[str],
                   asked: Sequence[str] = ()) -> Dict[str, Dict[str, List[Run]]]:
    """The ``--across`` columns: each records folder's finished runs (:func:`read_records`) of
    ``methods`` and of the ablation variants ``asked``, every column keyed by all of them in that
    order (an empty list where the folder has none), so the table's rows keep that order. Why a
    choice and not every run found: a folder that holds ablations would fill the table with
    variants that the other sizes do not have; they are shown when asked for. A folder with none
    of them, or an asked variant that no folder holds, is refused; a method no folder holds is
    left out (every method is asked for by default)."""
    names = [*methods, *asked]
    columns = {}
    for out in outs:
        found = read_records(out)
        columns[str(out)] = {name: found.get(name, []) for name in names}
    empty = [out for out, runs in columns.items() if not any(runs.values())]
    if empty:
        raise UsageError(f"no finished runs of {', '.join(names)} in {', '.join(empty)}",
                         "pass --out folders of earlier benchmark runs (each holds <method>/seed<k>/result.json)")
    nowhere = [name for name in asked if not any(runs[name] for runs in columns.values())]
    if nowhere:
        raise UsageError(f"no folder holds finished runs of {', '.join(nowhere)}",
                         "drop them from --ablation, or add the --out folder that holds them")
    return columns


def record(m: Matrix, name: str, seed: int, seconds: float, trained_on: Optional[str],
           trained_under: Optional[Dict]) -> Run:
    """Evaluate the trained run ``name`` seed ``seed`` from its checkpoint and write its record
    (:func:`_write`), its traces too when it has no gates; a run with gates also records them
    epoch by epoch of stage 1, from its training log (``gates``: :func:`stage1_diagnostics`)."""
    save = m.save_dir(name, seed)
    write_weights(save / "checkpoint_last.pt", save / WEIGHTS)  # learned loss weights, if any: before result.json
    result, outcomes = evaluate(save / "checkpoint_last.pt", m.data, m.device, traces_path=save / TRACES)
    log = save / "train.log"
    gates = stage1_diagnostics(log.read_text()) if log.is_file() else None
    return _write(m, name, seed, seconds, trained_on, trained_under, {**result, **({"gates": gates} if gates else {})},
                  outcomes)


def _weights_missing(m: Matrix, name: str, seed: int) -> bool:
    """A finished run of a method that learns its loss weights (LeeBERT, unless its overrides fix
    them), without ``weights.json``, with its checkpoint: recorded before runs kept their weights."""
    save = m.save_dir(name, seed)
    return (m.method_of(name) == "leebert" and "criterion.learn_weights=false" not in m.overrides_for(name)
            and not (save / WEIGHTS).is_file() and is_intact(save / "checkpoint_last.pt"))


def weight_records(m: Matrix, names: Sequence[str]) -> Dict[str, List[Tuple[int, Dict]]]:
    """The ``weights.json`` records of ``names`` at ``m``'s seeds, (seed, record) by name; names
    without any (fixed weights) left out."""
    found = {name: [(seed, r) for seed in m.seeds if (r := read_weights(m.save_dir(name, seed))) is not None]
             for name in names}
    return {name: rs for name, rs in found.items() if rs}


def _write(m: Matrix, name: str, seed: int, seconds: float, trained_on: Optional[str], trained_under: Optional[Dict],
           result: Dict, outcomes: Outcomes) -> Run:
    """Write the run's ``outcomes.npz`` and ``result.json``. ``device``: the kind it trained on;
    ``budget``: ``trained_under`` (:meth:`Matrix.budget_record`); each left out when unknown (a
    record older than the field, scored again: carried over, never guessed)."""
    save = m.save_dir(name, seed)
    result = {"method": name, "seed": seed, "train_seconds": seconds, "overrides": m.overrides_for(name),
              **({"budget": trained_under} if trained_under is not None else {}),
              **({"device": trained_on} if trained_on else {}), **result}
    outcomes.save(save / "outcomes.npz")
    write_text(save / "result.json", json.dumps(result, indent=1))  # written last (whole): its presence means finished
    return Run(name, seed, result, outcomes)


def _has_traces(path: Path) -> bool:
    return path.is_file() and trace_format(path) == TRACE_FORMAT


def _traces_missing(m: Matrix, name: str, seed: int, run: Run) -> bool:
    """A current run without gates, without traces, with its checkpoint, not already found not to
    match them under this evaluation (:func:`_add_traces`)."""
    save = m.save_dir(name, seed)
    mismatch = save / MISMATCH
    return (not run.result.get("gated") and not _has_traces(save / TRACES) and (save / "checkpoint_last.pt").is_file()
            and not (mismatch.is_file() and mismatch.read_text().strip() == str(VERSION)))


def _add_traces(m: Matrix, name: str, seed: int, run: Run, log: Callable[[str], None]) -> None:
    """Give a finished run without gates, scored by the current evaluation before runs kept their
    traces, its ``traces.npz``, traced from its checkpoint: written only when scoring them gives
    its record exactly (every figure of ``result.json``, and the test outcomes), so the traces are
    the record's and a later evaluation can score the run again without the checkpoint, which is
    not committed. About as long as the run's evaluation, once. A damaged checkpoint (a truncated
    zip) is skipped with a line; a whole one that does not load stops the matrix, as its
    evaluation would."""
    save = m.save_dir(name, seed)
    if not is_intact(save / "checkpoint_last.pt"):  # a damaged checkpoint must not stop the matrix
        log(f"benchmark: {name} seed {seed}: its checkpoint is damaged (not a whole zip archive): kept without traces")
        return
    traces = traces_of(save / "checkpoint_last.pt", m.data, m.device)
    if traces is None:
        return
    result, outcomes = score_traces(traces)
    result = json.loads(json.dumps(result))  # as result.json holds it (lists, not tuples)
    differ = [k for k in result if result[k] != run.result.get(k)]
    if not differ and not outcomes.same_as(run.outcomes):
        differ = ["outcomes.npz"]
    if differ:
        (save / MISMATCH).write_text(f"{VERSION}\n")  # not tried again while the evaluation stays the same
        log(f"benchmark: {name} seed {seed}: its checkpoint's traces do not give its record ({', '.join(differ)} "
            f"differ): no traces written ({MISMATCH} says so; delete it to try again)")
        return
    save_traces(save / TRACES, traces)
    log(f"benchmark: {name} seed {seed}: traces written (traced from its checkpoint; they give its record exactly)")


def run_matrix(m: Matrix, log: Callable[[str], None] = print) -> Dict[str, List[Run]]:
    """Every run of the matrix, training and evaluating the missing ones (seed by seed); a finished
    run evaluated by an older evaluation (``evaluation.required_version``) is scored again, not
    retrained: from its traces when it has them (``traces.npz``, committed with the record), else from
    its checkpoint when that is still there (not committed), else it is kept as it was scored. A
    current run without gates that has no traces yet gets them from its checkpoint (:func:`_add_traces`).
    A finished run is kept whatever device trained it, with a line saying so when it is not this
    matrix's: its accuracy stands, its training minutes are that device's."""
    runs: Dict[str, List[Run]] = {name: [] for name in m.methods}
    for seed in m.seeds:
        for name in m.methods:
            run = finished(m, name, seed)
            stale = run is not None and run.result.get("evaluation", 1) < required_version(run.result)
            traces = m.save_dir(name, seed) / TRACES
            if stale and not run.result.get("gated") and _has_traces(traces):
                log(f"benchmark: {name} seed {seed}: scoring again from its traces (evaluation "
                    f"{run.result.get('evaluation', 1)} -> {VERSION})")
                run = _write(m, name, seed, run.result["train_seconds"], run.result.get("device"),
                             run.result.get("budget"), *score_traces(load_traces(traces)))
            elif stale and not (m.save_dir(name, seed) / "checkpoint_last.pt").is_file():
                log(f"benchmark: {name} seed {seed}: kept as evaluation {run.result.get('evaluation', 1)} scored it "
                    f"(it has neither traces nor a checkpoint); delete its result.json to train it again")
            elif stale:
                log(f"benchmark: {name} seed {seed}: evaluating again (evaluation {run.result.get('evaluation', 1)} "
                    f"-> {VERSION}) ...")
                run = record(m, name, seed, run.result["train_seconds"], run.result.get("device"),
                             run.result.get("budget"))
            elif run is not None and _traces_missing(m, name, seed, run):
                _add_traces(m, name, seed, run, log)
            if run is not None and _weights_missing(m, name, seed):
                if write_weights(m.save_dir(name, seed) / "checkpoint_last.pt", m.save_dir(name, seed) / WEIGHTS):
                    log(f"benchmark: {name} seed {seed}: {WEIGHTS} written from its checkpoint")
            missing = [] if run is None else unrecorded(m, name, run.result)
            if missing:
                log(f"benchmark: {name} seed {seed}: its record does not say its {', '.join(missing)}: kept as "
                    "trained under this matrix's (delete its result.json to train it again if it was not)")
            if run is not None and run.result.get("device", m.device.type) != m.device.type:
                log(f"benchmark: {name} seed {seed}: trained on {run.result['device']}, kept in this "
                    f"--device {m.device.type} matrix (its train minutes are {run.result['device']}'s); "
                    "delete its result.json to train it here")
            if run is None:
                m.save_dir(name, seed).mkdir(parents=True, exist_ok=True)
                claim_launch(m, name, seed, log)
                log(f"benchmark: {name} seed {seed} ...")
                run = record(m, name, seed, train(m, name, seed), m.device.type, m.budget_record(name))
            runs[name].append(run)
    return runs


def earlier_variants(m: Matrix, known: Sequence[Variant], runs: Mapping[str, List[Run]],
                     log: Callable[[str], None] = print) -> Dict[str, List[Run]]:
    """The runs of the variants of ``known`` that ``m`` did not ask for but that earlier invocations
    finished in its folder, by name, read as recorded (nothing trained or scored again). Why: each
    invocation writes ``summary.md`` from the runs it holds, so without these a summary would list
    only the ablations of its last invocation. A variant counts when its method is among ``runs``
    (this matrix's) and every seed of ``m`` has its record (:func:`_left_out`); a variant with some
    records that does not count gets one line saying why, and one whose records lack budget keys
    (:func:`unrecorded`) a line saying they were taken as this matrix's, as ``run_matrix`` says
    of the methods' runs."""
    found: Dict[str, List[Run]] = {}
    for v in known:
        if v.name in m.variants or v.method not in runs:
            continue
        recorded = [_read_run(m.save_dir(v.name, seed), v.name, seed) for seed in m.seeds]
        if all(r is None for r in recorded):
            continue
        asked = replace(m, variants={**m.variants, v.name: v})  # m as if --ablation had named v
        why = _left_out(asked, v, recorded, runs[v.method])
        if why:
            log(f"benchmark: {v.name}: left out of the summary ({why})")
            continue
        found[v.name] = recorded
        missing = sorted({k for r in recorded for k in unrecorded(asked, v.name, r.result)})
        if missing:
            log(f"benchmark: {v.name}: its records do not all say their {', '.join(missing)}: summarised as "
                "trained under this matrix's")
    return found


def _left_out(m: Matrix, v: Variant, recorded: Sequence[Optional[Run]], reference: Sequence[Run]) -> Optional[str]:
    """Why the records of ``v`` at ``m``'s seeds (``m`` holding ``v`` among its variants) cannot
    stand beside ``reference`` (its method's runs), or None: a seed without a record, a record
    trained with other overrides or another budget than ``m`` would give it now (:func:`mismatch`: ``--ablation`` would refuse it), one an
    older evaluation scored (``--ablation`` would score it again), or test examples that are not
    its method's (other data)."""
    missing = [seed for seed, r in zip(m.seeds, recorded) if r is None]
    if missing:
        return f"no record of seed {', '.join(map(str, missing))}: --ablation {v.name} trains it"
    other = next(((r.seed, why) for r in recorded if (why := mismatch(m, v.name, r.result))), None)
    if other is not None:
        return f"seed {other[0]} was trained with {other[1]}"
    stale = next((r for r in recorded if r.result.get("evaluation", 1) < required_version(r.result)), None)
    if stale is not None:
        return f"seed {stale.seed} was scored by evaluation {stale.result.get('evaluation', 1)}: --ablation {v.name} " \
               "scores it again"
    ref = {r.seed: r for r in reference}
    alien = next((r for r in recorded
                  if r.seed in ref and not np.array_equal(r.outcomes.ids, ref[r.seed].outcomes.ids)), None)
    if alien is not None:
        return f"seed {alien.seed}'s test examples are not {v.method}'s: it was trained on other data"
    return None


def summary_runs(m: Matrix, runs: Mapping[str, List[Run]], known: Sequence[Variant],
                 log: Callable[[str], None] = print) -> Tuple[Dict[str, List[Run]], List[Variant]]:
    """What ``summary.md`` and ``points.tsv`` show: this matrix's ``runs`` and the variants of
    ``known`` finished by earlier invocations (:func:`earlier_variants`), the methods first, then
    every variant in ``known``'s order; and those variants, each to be compared with its method."""
    earlier = earlier_variants(m, known, runs, log)
    if earlier:
        log(f"benchmark: the summary also holds {', '.join(earlier)} (finished by earlier invocations)")
    shown = [v for v in known if v.name in m.variants or v.name in earlier]
    methods = {name: rs for name, rs in runs.items() if name not in m.variants}
    return {**methods, **{v.name: runs[v.name] if v.name in m.variants else earlier[v.name] for v in shown}}, shown


def write_points(runs: Dict[str, List[Run]], path: Path) -> None:
    """Every operating point of every run, one row each (``chosen_at``: the targets it was chosen for)."""
    targets = [At("layers", s, rule) for s in (1.5, 1.9, 2.0, 3.0) for rule in RULES] + [At("flops", 2.0)]
    text = io.StringIO(newline="")
    w = csv.writer(text, delimiter="\t")
    w.writerow(["method", "seed", *POINT_COLUMNS, "chosen_at"])
    for method, rs in runs.items():
        for r in rs:
            chosen = {i: [] for i in range(len(r.result["points"]))}
            for at in targets:
                i = choose(r.result["points"], at)
                if i is not None:
                    chosen[i].append(str(at))
            for i, pt in enumerate(r.result["points"]):
                cells = [",".join(repr(v) for v in pt.get(k, ())) if k == "thresholds" else pt[k]
                         for k in POINT_COLUMNS]
                w.writerow([method, r.seed, *cells, ",".join(chosen[i])])
    write_text(path, text.getvalue())  # whole or not at all
