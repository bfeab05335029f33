#!/usr/bin/env python
"""Convert a Hugging Face BERT directory into a fairseq checkpoint for the exit_bert_* archs.

    python scripts/convert_hf_bert.py HF_DIR OUT_DIR

HF_DIR holds config.json, model.safetensors (or pytorch_model.bin) and vocab.txt (or tokenizer.json).
OUT_DIR receives model.pt (use it as checkpoint.restore_file), dict.txt (fairseq-preprocess
--srcdict), vocab.txt (the wordpiece bpe's vocabulary) and convert.json (arch and model overrides).
"""
import logging
from pathlib import Path

from leebert_plugin import cli
from leebert_plugin.models.hf_bert_import import convert


def main() -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", type=Path, help="Hugging Face BERT directory")
    parser.add_argument("out_dir", type=Path, help="new output directory (existing outputs are never overwritten)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = convert(args.hf_dir, args.out_dir)
    overrides = " ".join(f"model.{k}={v}" for k, v in summary["model_overrides"].items())
    print(f"wrote {args.out_dir}/model.pt, dict.txt, vocab.txt, convert.json ({summary['vocab_size']} tokens)")
    print(f"fine-tune with: model._name={summary['arch']} {overrides} task.separator_token=null "
          f"checkpoint.restore_file={(args.out_dir / 'model.pt').resolve()} (hydra; add + before model.* keys "
          f"your config lacks), after preprocessing with --bpe wordpiece --wordpiece-vocab {args.out_dir / 'vocab.txt'}")


if __name__ == "__main__":
    cli.run(main)
