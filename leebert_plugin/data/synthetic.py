"""Random token batches for tests and benchmarks (right-padded, first token <s>, varied lengths)."""
import torch
from fairseq.data import Dictionary
from torch import Tensor


def word_dictionary(n: int) -> Dictionary:
    """fairseq's special symbols and ``n`` words ``w0 .. w{n-1}``: the vocabulary of random models."""
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}")
    return d


def random_token_batch(dictionary: Dictionary, bsz: int, min_len: int, max_len: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (bsz,), generator=g)
    tokens = torch.full((bsz, int(lengths.max())), dictionary.pad(), dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, :n] = torch.randint(dictionary.nspecial, len(dictionary), (n,), generator=g)
        tokens[i, 0] = dictionary.bos()
    return tokens
