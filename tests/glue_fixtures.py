"""Small GLUE task folders in the official TSV layouts (headers, column counts, label spellings)."""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# a vocab.txt that covers most fixture words; the rest become [UNK]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "movie", "##s", "was", "is", "good", "bad",
         "it", "isn", "'", "t", "un", "##believ", "##able", "cafe", ".", ",", "!", "?", '"', "who", "what", "man"]
SENTENCES = ["The movie was good.", 'It isn\'t a "good" movie!', "Unbelievable, the café was bad.",
             "What is a movie?", "The man was unbelievable", "Who was the man?", "A bad movie, zorblax.",
             "It was the cafe."]
LABELS = {"binary": ["1", "1", "0", "1", "1"], "nli": ["contradiction", "contradiction", "neutral", "entailment",
                                                       "contradiction"],
          "entail": ["not_entailment", "not_entailment", "entailment", "not_entailment", "entailment"],
          "score": ["4.000", "2.5", "0.000", "5.000", "3.2"]}  # train labels; frequency order != class order
KIND = {"CoLA": "binary", "SST-2": "binary", "MRPC": "binary", "QQP": "binary", "STS-B": "score", "MNLI": "nli",
        "QNLI": "entail", "RTE": "entail", "WNLI": "binary"}
ROWS = {"train": 5, "dev": 3, "test": 2}
PAIR_HEAD = "index\tsentence1\tsentence2"


def _fields(task: str, stem: str, i: int, a: str, b: str, y: Optional[str]) -> List[str]:
    test = y is None
    if task == "CoLA":
        return [str(i), a] if test else ["gj04", y, "" if y == "1" else "*", a]
    if task == "SST-2":
        return [str(i), a] if test else [a, y]
    if task == "MRPC":
        return [str(i) if test else y, str(100 + i), str(200 + i), a, b]
    if task == "QQP":
        return [str(i), a, b] if test else [str(i), str(2 * i), str(2 * i + 1), a, b, y]
    if task == "STS-B":
        return [str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b] + ([] if test else [y])
    if task == "MNLI":
        parse = ["( a )", "( b )", "(ROOT a)", "(ROOT b)"]
        head = [str(i), str(31 + i), f"{31 + i}e", "fiction", *parse, a, b]
        return head if test else head + [y] + ([y] * 4 if stem.startswith("dev") else []) + [y]
    return [str(i), a, b] + ([] if test else [y])  # QNLI, RTE, WNLI


def _header(task: str, stem: str) -> Optional[str]:
    test = stem.startswith("test")
    mnli = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    return {
        "CoLA": "index\tsentence" if test else None,
        "SST-2": "index\tsentence" if test else "sentence\tlabel",
        "MRPC": ("index" if test else "Quality") + "\t#1 ID\t#2 ID\t#1 String\t#2 String",
        "QQP": "id\tquestion1\tquestion2" if test else "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "STS-B": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
                 + ("" if test else "\tscore"),
        "MNLI": "\t".join(mnli + ([] if test else ["label1"] + (["label2", "label3", "label4", "label5"]
                                                                if stem.startswith("dev") else []) + ["gold_label"])),
        "QNLI": "index\tquestion\tsentence" + ("" if test else "\tlabel"),
    }.get(task, PAIR_HEAD + ("" if test else "\tlabel"))


Example = Tuple[Tuple[str, ...], Optional[str]]  # (sentences, label)


def write_task(folder: Path, task: str) -> Dict[str, List[Example]]:
    """Write ``folder/<split>.tsv`` for ``task``; returns what each file holds, in row order."""
    folder.mkdir(parents=True, exist_ok=True)
    stems = (["train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched"] if task == "MNLI"
             else ["train", "dev", "test"])
    single = task in ("CoLA", "SST-2")
    written = {}
    for s, stem in enumerate(stems):
        n = ROWS[stem.split("_")[0]]
        labels = None if stem.startswith("test") else (LABELS[KIND[task]][s % 2:] + LABELS[KIND[task]])[:n]
        examples = []
        lines = [] if _header(task, stem) is None else [_header(task, stem)]
        for i in range(n):
            a, b = SENTENCES[(i + s) % len(SENTENCES)], SENTENCES[(i + s + 3) % len(SENTENCES)]
            y = None if labels is None else labels[i]
            lines.append("\t".join(_fields(task, stem, i, a, b, y)))
            examples.append(((a,) if single else (a, b), y))
        (folder / f"{stem}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written[stem] = examples
    return written
