"""Shared builders for the tests: a tiny exit model in-process, and CLI runners."""
import hashlib
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from fairseq.data import Dictionary
from omegaconf import OmegaConf

import leebert_plugin  # noqa: F401  (registers everything)
from leebert_plugin.runtime import launch
from leebert_plugin.runtime.launch import BIN, ROOT, free_port, json_records, run  # noqa: F401  (the tests' names)
from leebert_plugin.data.synthetic import random_token_batch, word_dictionary
from leebert_plugin.models.exit_roberta import ExitRobertaModel, exit_roberta_tiny_architecture, random_exit_model

HEAD = "sentence_classification_head"


def tiny_dictionary(n: int = 50) -> Dictionary:
    return word_dictionary(n)


def tiny_model(num_classes: int = 3, seed: int = 0, **overrides) -> ExitRobertaModel:
    """A 4-layer, 64-dim exit_roberta with random weights, in eval mode."""
    return random_exit_model(tiny_dictionary(), num_classes, exit_roberta_tiny_architecture, seed, HEAD,
                             max_positions=64, **overrides)


def random_batch(model: ExitRobertaModel, bsz: int, seed: int = 1, min_len: int = 3, max_len: int = 20):
    """Right-padded token batch with varied lengths, first token <s>."""
    return random_token_batch(model.encoder.dictionary, bsz, min_len, max_len, seed)


def validate(trained: Path, data: Path, *flags: str, subset: str = "valid", ckpt: str = "checkpoint_best.pt"):
    """fairseq-validate of ``trained/ckpt`` on ``data``: the subset's JSON figures, by name."""
    proc = run([str(BIN / "fairseq-validate"), str(data), "--path", str(trained / ckpt),
                "--user-dir", "user_dir", "--task", "early_exit_sentence_prediction",
                "--valid-subset", subset, "--batch-size", "16", "--cpu", "--log-format", "json", *flags])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = json_records(proc.stdout, subset)
    return {k[len(subset) + 1:]: float(v) for k, v in record.items()}


def digest(folder: Path, recursive: bool = False) -> dict:
    """The files of ``folder`` (with ``recursive``, of its subfolders too; not by default: hydra
    writes its own record into a save dir's ``hydra/``), relative path -> SHA-256 of the bytes."""
    files = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files) if p.is_file()}


def guarded_dir(tmp_path: Path, with_checkpoint: bool = True) -> Path:
    """A save dir that already holds files (a checkpoint too, by default) a failing run must not touch."""
    save = tmp_path / "save"
    save.mkdir()
    if with_checkpoint:
        (save / "checkpoint_best.pt").write_bytes(b"earlier result")
    (save / "notes.txt").write_text("keep me")
    return save


def assert_one_clear_error(proc, *words):
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for w in words:
        assert w in lines[0], lines[0]
    assert "Fix:" in lines[0]


def assert_refused(save: Path, command: Callable[[], subprocess.CompletedProcess], *words) -> None:
    """``command`` ends in one clear error line and leaves ``save`` exactly as it was."""
    before = digest(save)
    assert_one_clear_error(command(), *words)
    assert digest(save) == before


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if line.startswith("leebert-plugin: error:")]


# ---- multi-process runs: the README's CPU launch (one process per rank, tcp init, gloo) ----------
PROBE = ["common.user_dir=" + str(ROOT / "tests" / "rank_probe"), "task._name=early_exit_rank_probe"]
QUIET = ["dataset.disable_validation=true", "checkpoint.no_save=true", "model.dropout=0.0",
         "model.attention_dropout=0.0", "common.log_interval=1", "optimization.max_epoch=1"]


def hydra_command(config: str, save: Path, *overrides: str, probe: bool = True) -> List[str]:
    return launch.hydra_command(config, save, *(PROBE if probe else []), *overrides)


def launch_two_processes(config: str, save: Path, *overrides: str, logs: Optional[Path] = None,
                         probe: bool = True, backend: str = "pytorch_ddp",
                         env: Optional[Dict[str, str]] = None) -> List[subprocess.CompletedProcess]:
    """The package's two-rank launch (``probe``: with the rank-probe task)."""
    return launch.launch_two_processes(config, save, *(PROBE if probe else []), *overrides, logs=logs,
                                       backend=backend, env=env)


def train_two_processes(config: str, save: Path, *overrides: str, probe: bool = True,
                        backend: str = "pytorch_ddp") -> str:
    """Both ranks train without error; rank 0's log."""
    done = launch_two_processes(config, save, *overrides, probe=probe, backend=backend)
    assert [p.returncode for p in done] == [0, 0], "\n".join(f"rank {r}: {p.stderr[-2000:]}" for r, p in enumerate(done))
    for p in done:
        assert "unused" not in p.stderr.lower(), p.stderr[-3000:]
    return done[0].stdout


def probed(save: Path, rank: int) -> Dict[int, Dict[str, torch.Tensor]]:
    """update number -> that rank's state (model and learned loss weights) before the update."""
    files = sorted((save / "probe").glob(f"rank{rank}_update*.pt"))
    return {int(f.stem.split("update")[1]): torch.load(f, map_location="cpu") for f in files}


def assert_ranks_identical(save: Path, updates: int) -> Dict[int, Dict[str, torch.Tensor]]:
    rank0, rank1 = probed(save, 0), probed(save, 1)
    assert sorted(rank0) == sorted(rank1) == list(range(updates))
    for update in rank0:
        for key, value in rank0[update].items():
            assert torch.equal(value, rank1[update][key]), (update, key)
    return rank0


# ---- LeeBERT in-process: a criterion, batches with labels, bi-level training ------------------
def leebert(**kw):
    from leebert_plugin.criterions.leebert import LeeBertConfig, LeeBertCriterion

    return LeeBertCriterion(OmegaConf.structured(LeeBertConfig(**kw)), None)


def sample_for(model, bsz, seed, num_classes=2):
    """A labelled sentence-prediction batch as fairseq's task builds it."""
    tokens = random_batch(model, bsz, seed=seed)
    lengths = tokens.ne(model.encoder.dictionary.pad()).sum(1)
    g = torch.Generator().manual_seed(seed)
    return {"id": torch.arange(bsz), "nsentences": bsz, "ntokens": int(lengths.sum()),
            "net_input": {"src_tokens": tokens, "src_lengths": lengths},
            "target": torch.randint(0, num_classes, (bsz,), generator=g)}


def bilevel_training(model, criterion, planned_updates: Optional[int] = None, **settings):
    """The task's bi-level object for ``criterion``'s learned weights, with clo settings, for a run
    of ``planned_updates`` updates (None: unknown)."""
    from leebert_plugin.optim.bilevel import BilevelTraining
    from leebert_plugin.optim.clo import CLOConfig

    cfg = OmegaConf.structured(CLOConfig(lr=[1e-3], tpu=False, **settings))
    spec = criterion.loss_weight_spec(model.exit_layers)
    return BilevelTraining(cfg, spec["names"], spec["parametrization"], spec["group_scales"], d2_ratio=0.5, seed=1,
                           device=torch.device("cpu"), planned_updates=planned_updates)


def unrolled_outer(model, crit, b1, b2, xi, w):
    """L_outer(theta - xi grad_theta L_train(theta, w; b1); b2), differentiable in ``w`` (the term
    weights in ``term_names`` order, a tensor) through the virtual step (create_graph): its gradient
    in w is the exact second-order hypergradient the finite differences of ``hypergradient`` estimate.
    Under the fused CPU attention kernel there is no double backward: call it under
    ``sdpa_kernel(SDPBackend.MATH)``."""
    names = crit.term_names(model.exit_layers)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    terms, _, targets = crit.compute_terms(model, b1)
    train = sum(wk * terms[n] for wk, n in zip(w, names)) / targets.numel()
    grads = torch.autograd.grad(train, params, create_graph=True, allow_unused=True)
    shifted = {n: p if g is None else p - xi * g for (n, p), g in zip(named, grads)}

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self):
            t, _, y = crit.compute_terms(self.model, b2)
            return crit.outer_objective(t) / y.numel()

    return torch.func.functional_call(Outer(), {f"model.{n}": v for n, v in shifted.items()}, ())


# ---- short training runs and models with mixed decisions, shared by several test files ---------
SMARTBERT_SHORT = ["dataset.batch_size=32", "lr_scheduler.warmup_updates=2", "optimization.max_update=1000",
                   "common.log_interval=5", "task.stage1_epochs=1", "task.soft_gate_epochs=1"]
LEEBERT_SHORT = ["optimization.max_epoch=1", "optimization.max_update=6", "lr_scheduler.warmup_updates=2",
                 "dataset.batch_size=16", "optimizer.w_update_interval=1", "optimizer.w_lr=0.05",
                 "common.log_interval=1"]


def spread_model(num_classes: int = 3, **overrides):
    """A random tiny model whose exits disagree and vary in confidence, so decisions are mixed."""
    model = tiny_model(num_classes=num_classes, **overrides)
    encoder = model.encoder.sentence_encoder
    with torch.no_grad():
        # BERT's 0.02-std init makes every [CLS] state alike; widen weights so inputs matter
        encoder.embed_tokens.weight.normal_(0, 1)
        for layer in encoder.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.normal_(0, 10 / 8)
            for proj in (layer.self_attn.v_proj, layer.self_attn.out_proj):
                proj.weight.normal_(0, 1 / 8)
        for name, module in model.exit_heads[HEAD].named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(25.0 if name.endswith("out_proj") else 5.0)
    return model


def mixed_gates_model():
    model = spread_model(skip_gates=True)
    with torch.no_grad():
        for gate in model.skip_gates.gates:
            gate.out.weight.mul_(30.0)
            gate.out.bias.zero_()
    return model


# ---- fairseq's precision wrappers, built around a CPU model as fairseq's trainer builds them ----
PRECISIONS = {  # name -> the common.* settings of the command line
    "fp32": {},
    "amp": {"amp": True},
    "bf16": {"bf16": True},
    "fp16": {"fp16": True},  # flat fp32 master copy
    "fp16_no_flatten": {"fp16": True, "fp16_no_flatten_grads": True},
    "memory_efficient_bf16": {"bf16": True, "memory_efficient_bf16": True},
    "memory_efficient_fp16": {"fp16": True, "memory_efficient_fp16": True},
}


def precision_optimizer(model, precision: str, optimizer: str = "exit_adam", **settings):
    """Cast ``model`` as fairseq's trainer does for ``precision`` and build fairseq's optimizer
    (``optimizer`` with ``settings``) around its trainable parameters, as ``Trainer._build_optimizer``.

    The flat fp16 copy lives on ``torch.cuda.current_device()``; on CPU the caller monkeypatches
    that to return None (the CPU tensors' device index) so that fairseq's copies line up."""
    from fairseq import optim
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.optim.amp_optimizer import AMPOptimizer
    from fairseq.optim.fp16_optimizer import FP16Optimizer, MemoryEfficientFP16Optimizer
    from fairseq.registry import REGISTRIES

    common = PRECISIONS[precision]
    cfg = OmegaConf.structured(FairseqConfig)
    OmegaConf.set_struct(cfg, False)
    cfg.optimizer = OmegaConf.structured(REGISTRIES["optimizer"]["dataclass_registry"][optimizer](**settings))
    cfg.optimizer._name = optimizer
    for key, value in common.items():
        cfg.common[key] = value
    if common.get("fp16"):
        model.half()
    elif common.get("bf16"):
        model.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    if common.get("memory_efficient_fp16") or common.get("memory_efficient_bf16"):
        return MemoryEfficientFP16Optimizer.build_optimizer(cfg, params)
    if common.get("amp"):
        return AMPOptimizer.build_optimizer(cfg, params)
    if common.get("fp16") or common.get("bf16"):
        return FP16Optimizer.build_optimizer(cfg, params)
    return optim.build_optimizer(cfg.optimizer, params)


# ---- a tiny Hugging Face BERT folder, for the converter and the own-data walk -----------------------
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_hf_bert(folder: Path, words: List[str], seed: int = 0, **config) -> Path:
    """``folder`` as a Hugging Face BERT directory (config.json, vocab.txt, model.safetensors) of
    exit_bert_tiny's shape (2 layers, 128 wide, 2 heads, ffn 512) with random weights (std 0.02,
    BERT's initialisation); ``config`` overrides config.json's fields (a value None drops the field)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    vocab = BERT_SPECIALS + list(words)
    settings = {"model_type": "bert", "architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512,
                "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "vocab_size": len(vocab)}
    settings.update(config)
    settings = {k: v for k, v in settings.items() if v is not None}
    g = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    d, ffn = 128, 512
    weights = {"embeddings.word_embeddings.weight": normal(len(vocab), d),
               "embeddings.position_embeddings.weight": normal(512, d),
               "embeddings.token_type_embeddings.weight": normal(2, d),
               "embeddings.LayerNorm.weight": torch.ones(d), "embeddings.LayerNorm.bias": torch.zeros(d)}
    for i in range(2):
        p = f"encoder.layer.{i}."
        for name, shape in (("attention.self.query", (d, d)), ("attention.self.key", (d, d)),
                            ("attention.self.value", (d, d)), ("attention.output.dense", (d, d)),
                            ("intermediate.dense", (ffn, d)), ("output.dense", (d, ffn))):
            weights[p + name + ".weight"], weights[p + name + ".bias"] = normal(*shape), torch.zeros(shape[0])
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[p + name + ".weight"], weights[p + name + ".bias"] = torch.ones(d), torch.zeros(d)
    (folder / "config.json").write_text(json.dumps(settings, indent=1))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    save_file(weights, str(folder / "model.safetensors"))
    return folder
