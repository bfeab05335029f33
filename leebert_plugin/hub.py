"""Python API in the style of fairseq's hub interface: load a checkpoint, classify sentences.

    from leebert_plugin.hub import EarlyExitClassifier
    clf = EarlyExitClassifier.from_pretrained("runs/mr/checkpoints/checkpoint_best.pt", data="runs/mr/data-bin",
                                              bpe="sentencepiece", sentencepiece_model="runs/mr/data-bin/raw/spm.model")
    clf.predict(["A gem of a film.", "Dull and overlong."], exit_policy="entropy", threshold=0.3)

Sentences are encoded as fairseq-preprocess and the task encoded the training data (bpe pieces,
dictionary ids, ``</s>``, the task's init token; a pair joins with its separator token), batched,
and run through the same batched early-exit loop as validation.

The model runs on the device ``from_pretrained`` put it on (default: CUDA if available, else the
CPU); ``predict(..., device=...)`` moves it for that call and later ones.
"""
import itertools
from argparse import Namespace
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from fairseq.data import data_utils

from leebert_plugin.data.bpe_encode import build as build_bpe, check_choice, encode_text
from leebert_plugin.devices import DeviceLike, model_device, place
from leebert_plugin.errors import UsageError
from leebert_plugin.exits.evaluate import load
from leebert_plugin.exits.policies import build_policy
from leebert_plugin.export import bpe_of, is_export, read_export

Sentence = Union[str, Tuple[str, str]]


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


class EarlyExitClassifier:
    def __init__(self, model, task, bpe=None):
        self.model = model.eval()
        self.task = task
        self.bpe = bpe
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
        check_choice(bpe, bpe_args)
        if is_export(checkpoint):
            if data is not None:
                raise UsageError(f"{checkpoint} is an export folder, which holds its own dictionaries",
                                 "drop data=... (it is for training checkpoints)")
            model, task, shipped = read_export(checkpoint, device)
            chosen = bpe_of(checkpoint, bpe, bpe_args) if bpe else shipped
            return cls(model, task, _coder(chosen))
        chosen = bpe_of(data, bpe, bpe_args) if data is not None else None  # refused before the model is read
        model, task = load(checkpoint, data, device)
        if data is None:  # the data folder the checkpoint was trained on
            chosen = bpe_of(task.cfg.data, bpe, bpe_args)
        return cls(model, task, _coder(chosen))

    def encode(self, sentence: Sentence) -> torch.Tensor:
        parts = (sentence,) if isinstance(sentence, str) else tuple(sentence)
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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size={batch_size!r}", "use a whole batch size of 1 or more")
        if isinstance(sentences, (str, tuple)):
            raise UsageError(f"sentences is a single {type(sentences).__name__}, not an iterable of sentences",
                             "pass a list: predict([sentence]) or predict([(first, second)])")
        policy = build_policy(exit_policy, 1 if self.regression else len(self.labels), threshold, patience, thresholds)
        policy.check_model(len(self.model.exit_layers), self.model.skip_gates is not None)  # before any sentence is read
        device = place(self.model, device)
        return self._stream(iter(sentences), policy, batch_size, device)

    @torch.no_grad()
    def _stream(self, sentences: Iterator[Sentence], policy, batch_size: int, device: torch.device) -> Iterator[Prediction]:
        pad = self.task.source_dictionary.pad()
        while True:
            batch = list(itertools.islice(sentences, batch_size))
            if not batch:
                return
            tokens = data_utils.collate_tokens([self.encode(s) for s in batch], pad)
            logits, extra = self.model(tokens.to(device), classification_head_name=self.head, exit_policy=policy)
            exits = extra["exits"]
            where = zip(exits.exit_layer.tolist(), exits.layers_run.tolist())
            if self.regression:
                yield from (Prediction(None, [], layer, run, score=v) for v, (layer, run) in zip(logits.view(-1).tolist(), where))
                continue
            probs = torch.softmax(logits.float(), -1).cpu()
            for p, (layer, run) in zip(probs, where):
                yield Prediction(self.labels[int(p.argmax())], p.tolist(), layer, run)
