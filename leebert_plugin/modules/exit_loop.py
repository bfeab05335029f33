"""The layer loop, in two passes: full depth (training: every sample, the exits it trains) and
early-exit inference, sharing the embedding, the output record and the batch compaction. The
early-exit pass is two loops, one without skip gates and one with (``early_exit_pass`` picks), which
share their start and the step after each exit check.

With no policy, every layer runs on the whole batch and every exit's logits are returned, which
is what the criteria train on. With a policy, the loop asks it after each exit which samples are
done; their logits are written to their slots in the output, and the remaining layers run on the
other samples only: the batch shrinks, and so does the padded length when the longest sentences
have left. Decisions are tensor operations on the batch, so they do not depend on batch size.

With SmartBERT's skip gates, each layer first asks its gate. In training the layer output is
mixed with its input, h' = (1 - g) layer(h) + g h, g soft or hard (straight-through). At inference
a sample whose gate says skip (g >= skip_threshold) keeps its state and gets no exit check at that
layer; the layer runs on the other samples only.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from leebert_plugin.exits.policies import ExitPolicy
from leebert_plugin.modules.skip_gate import straight_through

GATE_MODES = ("soft", "hard")


@dataclass
class ExitOutput:
    """What one pass of the loop produces.

    ``logits``: ``B x C``, the prediction each sample leaves with. ``exit_layer``: ``B``, the
    1-based layer whose exit produced it. ``layers_run``: ``B``, transformer layers computed for
    the sample; ``layers_skipped`` and ``gates_run`` count its skipped layers and evaluated gates.
    Without a policy (training, full depth) also, per exit: ``exit_logits`` and, if asked,
    ``exit_states`` (``T x B x C``, the exit's input); per layer with gates: ``gate_probs`` (soft,
    ``B``) and, if asked, ``layer_inputs``.
    """

    logits: Tensor
    exit_layer: Tensor
    layers_run: Tensor
    layers_skipped: Tensor
    gates_run: Tensor
    exits_run: Tensor
    skipped_per_layer: Optional[Tensor] = None  # ``L``: how many samples skipped each layer
    exit_logits: List[Optional[Tensor]] = field(default_factory=list)  # None: an exit the pass left out
    exit_states: List[Tensor] = field(default_factory=list)
    gate_probs: List[Tensor] = field(default_factory=list)
    layer_inputs: List[Tensor] = field(default_factory=list)
    # contrastive projections, computed inside the model's forward (DDP sees every parameter that
    # gets a gradient there): of every layer input, and of the trained exits' states (None: not asked)
    layer_projections: List[Tensor] = field(default_factory=list)
    exit_projections: List[Optional[Tensor]] = field(default_factory=list)
    padding_mask: Optional[Tensor] = None


def _mask_or_none(padding_mask: Tensor) -> Optional[Tensor]:
    return padding_mask if bool(padding_mask.any()) else None


def _mix(layer_out: Tensor, layer_in: Tensor, weight: Tensor) -> Tensor:
    """(1 - w) layer(h) + w h, with the per-sample weight broadcast over ``T x B x C``."""
    w = weight.view(1, -1, 1).to(layer_out.dtype)
    return (1 - w) * layer_out + w * layer_in


def embed(encoder: nn.Module, src_tokens: Tensor):
    """Token embeddings (padding zeroed), ``T x B x C``, and the padding mask ``B x T``."""
    padding_mask = src_tokens.eq(encoder.padding_idx)
    x, _ = encoder.forward_embedding(src_tokens)
    return (x * (1 - padding_mask.unsqueeze(-1).type_as(x))).transpose(0, 1), padding_mask


def normed(encoder: nn.Module, h: Tensor) -> Tensor:
    """``h`` through the encoder's final layer norm, or ``h`` itself when it has none (post-norm
    BERT): what every exit reads."""
    return encoder.layer_norm(h) if encoder.layer_norm is not None else h


def _new_output(x: Tensor, padding_mask: Tensor, num_layers: int) -> ExitOutput:
    bsz, device = padding_mask.size(0), padding_mask.device

    def counter(value: int) -> Tensor:
        return torch.full((bsz,), value, dtype=torch.long, device=device)

    return ExitOutput(logits=x.new_zeros(0), exit_layer=counter(num_layers), layers_run=counter(num_layers),
                      layers_skipped=counter(0), gates_run=counter(0), exits_run=counter(0), padding_mask=padding_mask,
                      skipped_per_layer=torch.zeros(num_layers, dtype=torch.long, device=device))


def full_depth_pass(
    encoder: nn.Module,
    heads: nn.Module,
    exit_layers: Sequence[int],
    src_tokens: Tensor,
    return_states: bool = False,
    gates: Optional[nn.Module] = None,
    gate_mode: str = "hard",
    skip_threshold: float = 0.5,
    exits_used: Optional[Sequence[int]] = None,
) -> ExitOutput:
    """Training and full-depth evaluation: every sample, every layer, the exits in ``exits_used``
    (1-based layers; None: all). ``encoder`` is a fairseq ``TransformerEncoder``; ``exit_layers``
    are 1-based and end with the last layer; ``heads(k, x, pad)`` gives the logits of the k-th
    exit, ``gates(i, x, pad)`` the skip probability before layer i (0-based).

    An exit outside ``exits_used`` is not evaluated and its ``exit_logits`` entry is None: under
    DDP every parameter reachable from the outputs must get a gradient, so an exit whose loss a
    training stage does not use (DeeBERT's and SmartBERT's stage 1) must not be computed at all.
    Gates mix ``(1 - g) layer(h) + g h``, ``g`` soft or straight-through hard (``gate_mode``).
    """
    num_layers = len(encoder.layers)
    exit_index = {layer: k for k, layer in enumerate(exit_layers)}
    used = set(exit_layers if exits_used is None else exits_used)
    x, padding_mask = embed(encoder, src_tokens)
    out = _new_output(x, padding_mask, num_layers)
    pad_arg = _mask_or_none(padding_mask)
    for i in range(num_layers):  # index, not iterate: a LayerDropModuleList would drop layers
        u = encoder.layers[i](x, encoder_padding_mask=pad_arg)
        if gates is not None:
            g = gates(i, x, pad_arg)
            out.gate_probs.append(g)
            if return_states:
                out.layer_inputs.append(x)
            x = _mix(u, x, straight_through(g, skip_threshold) if gate_mode == "hard" else g)
        else:
            x = u
        k = exit_index.get(i + 1)
        if k is None:
            continue
        h = normed(encoder, u if i + 1 < num_layers else x)  # exits read the layer's own output; the last, the final state
        out.exit_logits.append(heads(k, h, pad_arg) if i + 1 in used else None)
        if return_states:
            out.exit_states.append(h)
    out.exits_run.fill_(len(used))
    if gates is not None:
        out.gates_run.fill_(num_layers)
        skipped = torch.stack([p.detach() >= skip_threshold for p in out.gate_probs])  # L x B
        out.layers_skipped, out.skipped_per_layer = skipped.sum(0), skipped.sum(1)
        out.layers_run = num_layers - out.layers_skipped
    out.logits = out.exit_logits[-1] if out.exit_logits[-1] is not None else x.new_zeros(0)
    return out


@dataclass
class _Running:
    """The samples still in the early-exit loop, one row (or column of ``x``) each.

    ``slot``: each row's index in the output; ``x``: ``T x n x C``; ``pad``: ``n x T``, and
    ``pad_arg``, the same or None where no row has padding (the form layers and heads take);
    ``span``: ``2 x n``, :func:`token_span` (None for a batch of one row: a single row never needs it);
    ``state``: the policy's; ``tally``: ``2 x n``, the layers each row skipped and the exit checks it
    missed by skipping an exit layer (None without gates: nothing is ever skipped).
    """

    slot: Tensor
    x: Tensor
    pad: Tensor
    pad_arg: Optional[Tensor]
    span: Optional[Tensor]
    state: dict
    tally: Optional[Tensor]

    def select(self, rows: Tensor, length: int, has_padding: bool) -> "_Running":
        """The rows ``rows`` (integer indices), trimmed to ``length`` positions: index tensors and a
        Python slice, so no host sync (a boolean mask would need one to size its result)."""
        pad = self.pad[:, :length].index_select(0, rows)
        return _Running(slot=self.slot.index_select(0, rows), x=self.x[:length].index_select(1, rows), pad=pad,
                        pad_arg=pad if has_padding else None, span=_rows(self.span, rows),
                        state={name: value.index_select(0, rows) for name, value in self.state.items()},
                        tally=_rows(self.tally, rows))


def _rows(columns: Optional[Tensor], rows: Tensor) -> Optional[Tensor]:
    """The columns ``rows`` of a ``k x n`` per-row record, or None for an absent one."""
    return None if columns is None else columns.index_select(1, rows)


def token_span(padding_mask: Tensor) -> Tensor:
    """Per sample ``(end, -first_pad)``, ``2 x B``: one past its last real token, and minus the
    position of its first padding (``T`` if none). The longest end among some samples is the
    padded length they need; they have padding within it iff some first pad lies before it.
    This holds for any padding; with fairseq's right padding ``end == first_pad``. The sign makes
    both answers maxima, so one reduction gives them (:func:`_census`)."""
    length = padding_mask.size(1)
    positions = torch.arange(length, device=padding_mask.device)
    end = ((positions + 1) * ~padding_mask).amax(1)
    first_pad = torch.where(padding_mask, positions, length).amin(1)
    return torch.stack((end, -first_pad))


def _census(outside: Tensor, span: Optional[Tensor]) -> Tuple[int, int, int]:
    """How many rows ``outside`` (bool: leaving, or skipping a layer) marks, and the padded length
    the other rows need and the first padding position among them, as Python ints: the loop's one
    host sync per decision, the three scalars fetched together by one ``tolist``.

    With one row, all or none of the rows are outside, so nobody stays behind whose length could
    matter: the count alone is fetched (the lengths returned, ``0``, are never read), and no span
    is needed. Batch-1 serving takes this path at every exit; it saves a few small kernels there."""
    if outside.size(0) == 1:
        return int(outside[0]), 0, 0
    extent = span.masked_fill(outside, torch.iinfo(span.dtype).min).amax(1)
    count, length, neg_first_pad = torch.cat((outside.sum(0, keepdim=True), extent)).tolist()
    return count, length, -neg_first_pad


def _leave(out: ExitOutput, tally: Optional[Tensor], run: _Running, rows: Optional[Tensor], logits: Tensor,
           layer_no: int, exits_passed: int) -> None:
    """Write the results of the rows ``rows`` of ``run`` (None: all of them) to their output slots:
    their ``logits``, exit layer, ``exits_passed`` (the skipped checks are subtracted at the end)
    and, with gates, their ``tally`` columns."""
    if rows is not None:
        logits, slots, counts = logits.index_select(0, rows), run.slot.index_select(0, rows), _rows(run.tally, rows)
    else:
        slots, counts = run.slot, run.tally
    out.logits.index_copy_(0, slots, logits)
    out.exit_layer.index_fill_(0, slots, layer_no)
    out.exits_run.index_fill_(0, slots, exits_passed)
    if tally is not None:
        tally.index_copy_(1, slots, counts)


def early_exit_pass(
    encoder: nn.Module,
    heads: nn.Module,
    exit_layers: Sequence[int],
    src_tokens: Tensor,
    policy: ExitPolicy,
    gates: Optional[nn.Module] = None,
    skip_threshold: float = 0.5,
) -> ExitOutput:
    """Inference: after each exit the policy marks the confident samples done; their logits go to
    their slots and the remaining layers run on the other samples only. With gates, a sample whose
    gate says skip keeps its state and gets no exit check at that layer (:func:`_gated_pass`; the
    loop without gates, :func:`_plain_pass`, has none of that bookkeeping).

    Host syncs: one per forward (is there padding at all), one per exit but the last (who leaves,
    how long the rest still are, whether they still have padding: :func:`_census`) and, with gates,
    one per layer (who runs it). Rows are then picked with integer indices (a stable sort puts the
    kept rows first, in their order, so results do not change), which need none. Per-sample
    counters are not updated layer by layer: they follow from the exit layer and the skips,
    written once when a sample leaves, at the cost of no torch call per layer.
    """
    policy.check_model(len(exit_layers), gates is not None)
    exit_index = {layer: k for k, layer in enumerate(exit_layers)}
    if gates is None:
        return _plain_pass(encoder, heads, exit_index, src_tokens, policy)
    return _gated_pass(encoder, heads, exit_index, src_tokens, policy, gates, skip_threshold)


def _start(encoder: nn.Module, src_tokens: Tensor, policy: ExitPolicy, gated: bool) -> Tuple[ExitOutput, _Running]:
    """The output record and every sample running, embedded; with gates, ``run.tally``, ``2 x B``:
    per sample, row 0 the layers it skipped, row 1 the exit checks it missed by skipping."""
    x, padding_mask = embed(encoder, src_tokens)
    bsz, device = src_tokens.size(0), src_tokens.device
    out = _new_output(x, padding_mask, len(encoder.layers))
    tally = torch.zeros(2, bsz, dtype=torch.long, device=device) if gated else None
    run = _Running(slot=torch.arange(bsz, device=device), x=x, pad=padding_mask, pad_arg=_mask_or_none(padding_mask),
                   span=token_span(padding_mask) if bsz > 1 else None, state=policy.init_state(bsz, device),
                   tally=tally)
    return out, run


def _after_check(out: ExitOutput, tally: Optional[Tensor], run: _Running, n: int, logits: Tensor,
                 done: Optional[Tensor], layer_no: int, exits_passed: int) -> Tuple[_Running, int]:
    """The rows ``done`` marks (None: all of them, at the last layer) leave with their ``logits``;
    the others go on, trimmed to the length they still need. The running rows and their count
    (0: nobody is left)."""
    if out.logits.numel() == 0:  # the first check: now the number of classes is known
        out.logits = logits.new_zeros(out.exit_layer.size(0), logits.size(-1))
    if done is None:
        _leave(out, tally, run, None, logits, layer_no, exits_passed)
        return run, 0
    n_done, length, first_pad = _census(done, run.span)
    if not n_done:
        return run, n
    n_keep = n - n_done
    if not n_keep:
        _leave(out, tally, run, None, logits, layer_no, exits_passed)
        return run, 0
    order = torch.argsort(done, stable=True)  # kept rows first, each group in its order
    _leave(out, tally, run, order[n_keep:], logits, layer_no, exits_passed)
    return run.select(order[:n_keep], length, first_pad < length), n_keep


def _plain_pass(encoder: nn.Module, heads: nn.Module, exit_index: Dict[int, int], src_tokens: Tensor,
                policy: ExitPolicy) -> ExitOutput:
    """Early exit without gates: every running row runs every layer and every exit check."""
    num_layers = len(encoder.layers)
    out, run = _start(encoder, src_tokens, policy, gated=False)
    n = src_tokens.size(0)
    for i in range(num_layers):
        run.x = encoder.layers[i](run.x, encoder_padding_mask=run.pad_arg)
        k = exit_index.get(i + 1)
        if k is None:
            continue
        logits = heads(k, normed(encoder, run.x), run.pad_arg)
        done = None
        if i + 1 < num_layers:
            done, run.state = policy.step(logits, run.state)
        run, n = _after_check(out, None, run, n, logits, done, i + 1, k + 1)
        if not n:
            break
    out.layers_run = out.exit_layer.clone()  # nothing skipped: every layer up to the exit ran
    return out


def _gated_pass(encoder: nn.Module, heads: nn.Module, exit_index: Dict[int, int], src_tokens: Tensor,
                policy: ExitPolicy, gates: nn.Module, skip_threshold: float) -> ExitOutput:
    """Early exit with skip gates: before each layer, the rows whose gate says skip keep their
    state, and at an exit layer get no check (the policy's state of theirs is kept as it was)."""
    num_layers = len(encoder.layers)
    out, run = _start(encoder, src_tokens, policy, gated=True)
    tally = run.tally.clone()  # the record of the rows that left; run.tally travels with the running rows
    n = src_tokens.size(0)
    for i in range(num_layers):
        layer_no = i + 1
        k = exit_index.get(layer_no)
        skip = ~(gates(i, run.x, run.pad_arg) < skip_threshold)
        n_skip, _, first_pad = _census(skip, run.span)
        out.skipped_per_layer[i] = n_skip
        n_run = n - n_skip
        ran = None  # the rows that run this layer, when some skip it
        if n_skip:
            if k is not None and layer_no < num_layers:  # a skipped exit layer: no check there
                run.tally += skip
            else:
                run.tally[0].add_(skip)
            ran = torch.argsort(skip, stable=True)[:n_run]  # the running rows, in order
            sub_pad = run.pad.index_select(0, ran) if first_pad < run.x.size(0) else None
        if ran is None:
            run.x = encoder.layers[i](run.x, encoder_padding_mask=run.pad_arg)
        elif n_run:
            run.x = run.x.index_copy(1, ran, encoder.layers[i](run.x.index_select(1, ran), encoder_padding_mask=sub_pad))
        if k is None or (layer_no < num_layers and not n_run):
            continue
        if layer_no == num_layers or ran is None:
            logits = heads(k, normed(encoder, run.x), run.pad_arg)
        else:  # only the rows that ran this layer get an exit check
            sub_logits = heads(k, normed(encoder, run.x.index_select(1, ran)), sub_pad)
            logits = sub_logits.new_zeros(n, sub_logits.size(-1)).index_copy(0, ran, sub_logits)
        done = None  # at the last layer everyone left leaves, skipped or not
        if layer_no < num_layers and ran is None:
            done, run.state = policy.step(logits, run.state)
        elif layer_no < num_layers:
            sub_done, sub_state = policy.step(sub_logits, {name: v.index_select(0, ran) for name, v in run.state.items()})
            run.state = {name: v.index_copy(0, ran, sub_state[name]) for name, v in run.state.items()}
            done = sub_done.new_zeros(n).index_copy(0, ran, sub_done)
        run, n = _after_check(out, tally, run, n, logits, done, layer_no, k + 1)
        if not n:
            break
    out.layers_skipped, missed_checks = tally
    out.exits_run -= missed_checks
    out.layers_run = out.exit_layer - out.layers_skipped
    out.gates_run = out.exit_layer.clone()  # a gate before every layer a sample reaches
    return out
