"""Python API in the style of fairseq's hub interface: load a checkpoint, classify sentences.

    from leebert_plugin.hub import EarlyExitClassifier
    clf = EarlyExitClassifier.from_pretrained("runs/mr/checkpoints/checkpoint_best.pt", data="runs/mr/data-bin",
                                              bpe="sentencepiece", sentencepiece_model="runs/mr/data-bin/raw/spm.model")
    clf.predict(["A gem of a film.", "Dull and overlong."], exit_policy="entropy", threshold=0.3)

Sentences are encoded as fairseq-preprocess and the task encoded the training data (bpe pieces,
dictionary ids, ``</s>``, the task's init token; a pair joins with its separator token), batched,
and run through the same batched early-exit loop as validation.

``calibrate`` picks a threshold with a guarantee ("at most D points lost, with 95% confidence") on
dev sentences, labelled or not (:mod:`leebert_plugin.exits.risk_control`).

The model runs on the device ``from_pretrained`` put it on (default: CUDA if available, else the
CPU); ``predict(..., device=...)`` moves it for that call and later ones.

Every bad argument is a :class:`~leebert_plugin.errors.UsageError` (a ``ValueError``), never a
``TypeError`` or ``AttributeError`` from deep inside: the options are checked in one place,
:func:`check_options`, before the first sentence is read, and each sentence by :func:`check_sentence`
as it is read (a generator is read batch by batch). A batch whose tokens are mostly ``<unk>`` (the
sentences read with another bpe than the model's) is logged once per classifier, with its share.
"""
import itertools
import logging
import numbers
import os
from argparse import Namespace
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from fairseq.data import data_utils

from leebert_plugin.data.bpe_encode import build as build_bpe, check_choice, encode_text
from leebert_plugin.runtime.devices import DeviceLike, model_device, place
from leebert_plugin.errors import UsageError
from leebert_plugin.exits import risk_control
from leebert_plugin.exits.evaluate import ExitTrace, load
from leebert_plugin.exits.flops import unit_flops
from leebert_plugin.exits.policies import build_policy
from leebert_plugin.export import bpe_of, is_export, read_export, read_manifest

logger = logging.getLogger(__name__)

Sentence = Union[str, Tuple[str, str]]
UNK_WARNING = 0.5  # share of <unk> among a batch's text tokens above which the bpe is probably the wrong one


@dataclass
class Prediction:
    label: Optional[str]  # the label as written in the data (not fairseq's class index); None: regression
    probs: List[float]  # per class, in ``EarlyExitClassifier.labels`` order (empty for regression)
    exit_layer: int  # 1-based layer whose exit gave the prediction
    layers_run: int  # transformer layers computed for this sentence
    score: Optional[float] = None  # regression (STS-B): the predicted value, in the training target's units


def _coder(chosen: Optional[Tuple[str, dict]]):
    """The bpe ``(name, options)`` built, or None (sentences come already encoded)."""
    return None if chosen is None else build_bpe(Namespace(bpe=chosen[0], **chosen[1]))


def _number(name: str, value, allow_none: bool = True) -> None:
    """``value`` is a real number (numpy's too; not a bool, not its text), or None where allowed."""
    if (value is None and allow_none) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return
    hint = f"{name}={float(value)}" if isinstance(value, str) and _is_float(value) else f"{name}=0.3"
    more = ("; several thresholds, one per exit but the last, are thresholds=[...] with "
            "exit_policy='per_exit_entropy'") if isinstance(value, (list, tuple)) else ""
    raise UsageError(f"{name}={value!r} is a {type(value).__name__}, not a number", f"pass a number, e.g. {hint}{more}")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_options(exit_policy, threshold, patience, batch_size, thresholds) -> None:
    """The types of ``predict``'s options (their ranges are the policy's to check: ``build_policy``)."""
    if not isinstance(exit_policy, str):
        raise UsageError(f"exit_policy={exit_policy!r} is a {type(exit_policy).__name__}, not a policy name",
                         "pass a name, e.g. exit_policy='entropy'")
    _number("threshold", threshold)
    if isinstance(patience, bool) or not isinstance(patience, numbers.Integral):
        raise UsageError(f"patience={patience!r} is not a whole number", "pass a whole number of 1 or more, e.g. patience=2")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise UsageError(f"batch_size={batch_size!r}", "use a whole batch size of 1 or more")
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, (list, tuple)) and not hasattr(thresholds, "tolist"):
        raise UsageError(f"thresholds={thresholds!r} is not a list of numbers", "pass one number per exit but the last, "
                         "e.g. thresholds=[0.2, 0.3]")
    for t in thresholds:
        _number("thresholds[...]", t, allow_none=False)


def check_sentences(sentences) -> None:
    """``sentences`` is an iterable of sentences, not one sentence, a mapping or a scalar."""
    if isinstance(sentences, (str, tuple, bytes)) or getattr(sentences, "ndim", None) == 0:
        raise UsageError(f"sentences is a single {type(sentences).__name__}, not an iterable of sentences",
                         "pass a list: predict([sentence]) or predict([(first, second)])")
    if isinstance(sentences, dict) or hasattr(sentences, "keys") and not hasattr(sentences, "tolist"):
        raise UsageError("sentences is a mapping: iterating it would classify its keys",
                         "pass the sentences themselves, e.g. predict(list(mapping.values()))")
    try:
        iter(sentences)
    except TypeError:
        raise UsageError(f"sentences is a {type(sentences).__name__}, not an iterable of sentences",
                         "pass a list of strings (or of (first, second) pairs for a pair model)") from None


def check_sentence(item, position: int, pairs: Optional[bool]) -> Tuple[str, ...]:
    """One sentence, as its parts: a string (a single-sentence model), or a pair of strings (a pair
    model); ``pairs`` None (an export older than the record): either."""
    what = "sentence pairs" if pairs else "single sentences"
    if isinstance(item, str):
        if pairs:
            raise UsageError(f"sentence {position} is one string, but this model classifies sentence pairs",
                             "pass each as a (first, second) tuple")
        return (item,)
    if getattr(item, "ndim", None) == 1:  # a row of a numpy array of pairs
        item = item.tolist()
    if isinstance(item, (tuple, list)) and all(isinstance(p, str) for p in item):
        fits = len(item) == 2 if pairs else len(item) in (1, 2) if pairs is None else False
        if not fits:
            raise UsageError(f"sentence {position} is a {type(item).__name__} of {len(item)} strings, but this model "
                             f"classifies {what}", "pass each sentence as one string" if pairs is False
                             else "pass each as a (first, second) pair")
        return tuple(item)
    raise UsageError(f"sentence {position} is {repr(item)[:60]} (a {type(item).__name__}), not text",
                     "pass strings" + (" (decode bytes first: text.decode('utf-8'))" if isinstance(item, bytes) else "")
                     + (", or (first, second) pairs of strings" if pairs is not False else ""))


def _path(name: str, value) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{name}={value!r} is a {type(value).__name__}, not a path", f"pass {name} as a string or a Path")
    return os.fspath(value)


class EarlyExitClassifier:
    def __init__(self, model, task, bpe=None, pairs: Optional[bool] = None):
        self.model = model.eval()
        self.task = task
        self.bpe = bpe
        self.pairs = pairs  # sentence pairs (True), single sentences (False), not recorded (None)
        self._warned_unk = False  # a wrong bpe is said once per classifier, not once per batch
        self.regression = bool(getattr(task.cfg, "regression_target", False))
        d = task.label_dictionary
        self.labels = [] if self.regression else [
            d[i + d.nspecial] for i in range(self.model.exit_heads[self.head].num_classes)]

    @property
    def head(self) -> str:
        return self.task.cfg.classification_head_name

    @property
    def loss_weights(self) -> Optional[Dict[str, float]]:
        """LeeBERT's learned loss-term weights by term name (``ce_L3``, ``kd_L3<L7``), as the training
        checkpoint saved them; None for a model trained with fixed weights, or an export (which
        keeps the model alone)."""
        learned = getattr(self.task, "learned_loss_weights", None)
        return None if learned is None else learned()

    @property
    def device(self) -> torch.device:
        """The device the model runs on (fairseq's hub interfaces have the same property)."""
        return model_device(self.model)

    @classmethod
    def from_pretrained(cls, checkpoint: str, data: Optional[str] = None, bpe: Optional[str] = None,
                        device: DeviceLike = None, **bpe_args) -> "EarlyExitClassifier":
        """``checkpoint``: a folder ``python -m leebert_plugin.export`` wrote (everything comes from
        it), or a training checkpoint with ``data``, the preprocessed data folder (for its
        dictionaries). ``bpe``: fairseq's bpe name (``wordpiece``, ``sentencepiece``, ``gpt2``, ...)
        with its options (``wordpiece_vocab=...``), or ``"none"`` for sentences that come already
        encoded; when not given, an export's own bpe, or the one ``prepare_data`` recorded in the
        training data's ``prepare.json``; a training checkpoint with neither is refused (raw text
        read without its bpe would become mostly ``<unk>`` and still get a label). ``device``:
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` (default: CUDA if available, else the CPU)."""
        checkpoint = _path("checkpoint", checkpoint)
        data = None if data is None else _path("data", data)
        if bpe is not None and not isinstance(bpe, str):
            raise UsageError(f"bpe={bpe!r} is not a bpe name", "pass e.g. bpe='wordpiece', or bpe='none'")
        check_choice(bpe, bpe_args)
        if is_export(checkpoint):
            if data is not None:
                raise UsageError(f"{checkpoint} is an export folder, which holds its own dictionaries",
                                 "drop data=... (it is for training checkpoints)")
            model, task, shipped = read_export(checkpoint, device)
            chosen = bpe_of(checkpoint, bpe, bpe_args) if bpe else shipped
            return cls(model, task, _coder(chosen), read_manifest(checkpoint).get("pairs"))
        chosen = bpe_of(data, bpe, bpe_args) if data is not None else None  # refused before the model is read
        model, task = load(checkpoint, data, device)
        if data is None:  # the data folder the checkpoint was trained on
            chosen = bpe_of(task.cfg.data, bpe, bpe_args)
        return cls(model, task, _coder(chosen), os.path.isdir(os.path.join(task.cfg.data, "input1")))

    def encode(self, sentence: Sentence, position: int = 0) -> torch.Tensor:
        parts = check_sentence(sentence, position, self.pairs)
        d, cfg = self.task.source_dictionary, self.task.cfg
        tokens = [] if cfg.init_token is None else [torch.tensor([cfg.init_token])]
        for i, part in enumerate(parts):
            text = encode_text(self.bpe, part) if self.bpe is not None else part
            if i and cfg.separator_token is not None:
                tokens.append(torch.tensor([cfg.separator_token]))
            tokens.append(d.encode_line(text, append_eos=True, add_if_not_exist=False).long())
        return torch.cat(tokens)[: self.task.max_positions()]

    def predict(self, sentences: Iterable[Sentence], exit_policy: str = "none", threshold: Optional[float] = None,
                patience: int = 1, batch_size: int = 32, device: DeviceLike = None,
                thresholds: Sequence[float] = ()) -> List[Prediction]:
        """Classify ``sentences`` (any iterable: a list, a generator, a file's lines) in batches of
        ``batch_size``, each sentence leaving at the exit the policy picks; on ``device`` when given
        (the model moves there and stays), else where the model is. :meth:`stream` yields the
        predictions batch by batch instead of returning them all. ``thresholds``: one per exit but
        the last, for ``exit_policy="per_exit_entropy"``."""
        return list(self.stream(sentences, exit_policy, threshold, patience, batch_size, device, thresholds))

    def stream(self, sentences: Iterable[Sentence], exit_policy: str = "none", threshold: Optional[float] = None,
               patience: int = 1, batch_size: int = 32, device: DeviceLike = None,
               thresholds: Sequence[float] = ()) -> Iterator[Prediction]:
        """:meth:`predict` as a generator: reads ``batch_size`` sentences, yields their predictions,
        reads on; the options are checked before the first sentence is read."""
        check_options(exit_policy, threshold, patience, batch_size, thresholds)
        check_sentences(sentences)
        thresholds = [float(t) for t in thresholds]
        policy = build_policy(exit_policy, 1 if self.regression else len(self.labels),
                              None if threshold is None else float(threshold), int(patience), thresholds)
        policy.check_model(len(self.model.exit_layers), self.model.active_gates is not None)  # before any sentence is read
        device = place(self.model, device)
        return self._stream(iter(sentences), policy, batch_size, device)

    def calibrate(self, dev_sentences: Sequence[Sentence], dev_labels: Optional[Sequence[str]] = None,
                  max_drop: float = 0.01, confidence: float = 0.95, exit_policy: str = "normalized_entropy",
                  values: Sequence[float] = (), patience: int = 1, risk: Optional[str] = None,
                  batch_size: int = 32, device: DeviceLike = None) -> risk_control.Certified:
        """The fastest setting of ``exit_policy`` that loses at most ``max_drop`` (a fraction: 0.01 is
        one accuracy point) with probability ``confidence`` over the draw of ``dev_sentences``, by
        :mod:`leebert_plugin.exits.risk_control` (exact binomial bounds, fixed-sequence testing).

        ``risk``: ``"disagreement"`` with the full-depth prediction (no labels needed: a service
        can calibrate on its own unlabelled traffic) or ``"accuracy_drop"`` (answers full depth got
        right and the early exit lost; needs ``dev_labels``); by default the latter when labels are
        given (tighter), the former otherwise. Both bound the accuracy drop. ``values``: the
        thresholds to test (patiences for ``patience``, levels for ``per_exit_entropy``), by
        default a fine grid; they are tested from the most conservative to the most aggressive.

        Returns a :class:`~leebert_plugin.exits.risk_control.Certified`: ``.threshold`` (the value
        chosen), ``.bound`` (its upper confidence bound), ``.speedup`` (layers, on dev),
        ``.message`` (one line; where nothing passes, how many examples would be needed) and
        ``.settings()``, the keyword arguments that make :meth:`predict` run it (full depth when
        nothing passed). The sentences must be new to the model and like the traffic it will
        serve; the guarantee is about that distribution, not about one batch of it."""
        if isinstance(dev_sentences, (str, tuple)) or not isinstance(dev_sentences, Sequence):
            raise UsageError(f"dev_sentences is a {type(dev_sentences).__name__}, not a list of sentences",
                             "pass a list: calibrate([sentence, ...]) or calibrate([(first, second), ...])")
        if self.regression:
            raise UsageError("calibrate bounds a classifier's accuracy drop; this model is a regression model",
                             "calibrate a classification model, or pick a regression threshold on dev by hand")
        risk_control.check_level(max_drop, confidence)
        risk = risk or ("accuracy_drop" if dev_labels is not None else "disagreement")
        if risk not in risk_control.RISKS:
            raise UsageError(f"unknown risk {risk!r}", f"use one of {', '.join(risk_control.RISKS)}")
        if risk == "accuracy_drop" and dev_labels is None:
            raise UsageError("risk='accuracy_drop' needs dev_labels",
                             "pass dev_labels, or risk='disagreement' (no labels needed)")
        if not dev_sentences:
            raise UsageError("no dev sentences to calibrate on", "pass a few hundred or more sentences")
        targets = self._label_ids(dev_labels, len(dev_sentences))
        kind = risk_control.knob(exit_policy)  # an unknown or unfit policy: one line, before any pass
        if self.model.skip_gates is not None:
            return self._calibrate_gated(dev_sentences, targets, max_drop, confidence, exit_policy, values,
                                         patience, risk, batch_size, device, kind)
        t = self._trace(dev_sentences, targets, batch_size, device)
        return risk_control.certify_trace(t, exit_policy, max_drop, confidence, risk, values, patience)

    def _label_ids(self, labels: Optional[Sequence[str]], n: int) -> Optional[torch.Tensor]:
        """The labels as class indices (the order of :attr:`labels`); None stays None."""
        if labels is None:
            return None
        if isinstance(labels, str) or len(labels) != n:
            raise UsageError(f"{1 if isinstance(labels, str) else len(labels)} dev labels for {n} dev sentences",
                             "pass one label per sentence, as written in the data (e.g. " + ", ".join(self.labels[:3]) + ")")
        index = {label: i for i, label in enumerate(self.labels)}
        unknown = [label for label in labels if str(label) not in index]
        if unknown:
            raise UsageError(f"dev label {unknown[0]!r} is not one of the model's labels",
                             "use the labels as written in the data: " + ", ".join(self.labels))
        return torch.tensor([index[str(label)] for label in labels])

    @torch.no_grad()
    def _trace(self, sentences: Sequence[Sentence], targets: Optional[torch.Tensor], batch_size: int,
               device: DeviceLike) -> ExitTrace:
        """Every exit's logits over ``sentences`` at full depth (a trace, as fairseq's splits get by
        :func:`~leebert_plugin.exits.evaluate.trace`); targets: the labels, else the full-depth
        predictions (read only by the per-exit rule's fit under ``disagreement``)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size={batch_size!r}", "use a whole batch size of 1 or more")
        device = place(self.model, device)
        pad = self.task.source_dictionary.pad()
        per_batch, lengths = [], []
        for start in range(0, len(sentences), batch_size):
            tokens = data_utils.collate_tokens([self.encode(s) for s in sentences[start:start + batch_size]], pad)
            _, extra = self.model(tokens.to(device), classification_head_name=self.head)
            per_batch.append(torch.stack(extra["exits"].exit_logits).float().cpu())
            lengths.append(tokens.ne(pad).sum(-1))
        logits, lengths = torch.cat(per_batch, 1), torch.cat(lengths)
        layer_flops, exit_flops = unit_flops(self.model, self.head, lengths)
        return ExitTrace(logits, logits[-1].argmax(-1) if targets is None else targets, lengths,
                         list(self.model.exit_layers), self.model.num_layers, 0, False, None,
                         layer_flops.cpu(), exit_flops.cpu())

    def _calibrate_gated(self, sentences, targets, max_drop, confidence, exit_policy, values, patience, risk,
                         batch_size, device, kind) -> risk_control.Certified:
        """Skip gates make a replay inexact: one real pass per candidate (a coarser default grid)."""
        C = len(self.labels)
        if kind == "level":
            raise UsageError(f"exit policy {exit_policy!r} needs every exit checked, and skip gates skip some",
                             "use entropy or normalized_entropy with a skip-gated (SmartBERT) model")
        grid = values or risk_control.default_values(exit_policy, C, len(self.model.exit_layers))[4::5]
        cands = risk_control.candidates(exit_policy, grid, C, patience)
        index = {label: i for i, label in enumerate(self.labels)}
        full = torch.tensor([index[p.label] for p in self.predict(sentences, batch_size=batch_size, device=device)])
        rows, speed = [], []
        for c in cands:
            preds = self.predict(sentences, batch_size=batch_size, **c.settings())
            rows.append(risk_control.losses(torch.tensor([index[p.label] for p in preds]), full, targets, risk))
            speed.append(self.model.num_layers * len(preds) / sum(p.layers_run for p in preds))
        return risk_control.choose(cands, torch.stack(rows), speed, max_drop, confidence, risk)

    @torch.no_grad()
    def _stream(self, sentences: Iterator[Sentence], policy, batch_size: int, device: torch.device) -> Iterator[Prediction]:
        pad = self.task.source_dictionary.pad()
        read = 0
        while True:
            batch = list(itertools.islice(sentences, batch_size))
            if not batch:
                return
            encoded = [self.encode(s, read + i) for i, s in enumerate(batch)]
            read += len(batch)
            if not self._warned_unk:
                self._say_unk_share(encoded)
            tokens = data_utils.collate_tokens(encoded, pad)
            logits, extra = self.model(tokens.to(device), classification_head_name=self.head, exit_policy=policy)
            exits = extra["exits"]
            where = zip(exits.exit_layer.tolist(), exits.layers_run.tolist())
            if self.regression:
                yield from (Prediction(None, [], layer, run, score=v) for v, (layer, run) in zip(logits.view(-1).tolist(), where))
                continue
            probs = torch.softmax(logits.float(), -1).cpu()
            for p, (layer, run) in zip(probs, where):
                yield Prediction(self.labels[int(p.argmax())], p.tolist(), layer, run)

    def _say_unk_share(self, encoded: List[torch.Tensor]) -> None:
        """Log once when most text tokens of a batch are ``<unk>``: share = #<unk> / #tokens that are
        not the dictionary's specials (``<s>``, ``</s>``, the separator)."""
        d = self.task.source_dictionary
        tokens = torch.cat(encoded)
        text = tokens >= d.nspecial
        unk = int((tokens == d.unk()).sum())
        total = int(text.sum()) + unk
        if total and unk / total > UNK_WARNING:
            self._warned_unk = True
            logger.warning(f"{unk / total:.0%} of the tokens of the first sentences are <unk> ({unk} of {total}): the "
                           f"bpe ({self.bpe.__class__.__name__ if self.bpe else 'none'}) is probably not the one the "
                           "model was trained with; pass the training data's bpe and its files to from_pretrained")
