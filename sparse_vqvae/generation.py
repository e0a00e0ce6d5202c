"""Generation: code maps built one position at a time in raster order - drawn from the priors (sampling), or read
from a coded stream (prior coding picks each symbol from the ANS decoder).

Causality means a layer's output at position i never changes once computed, so every layer's input is kept
in a buffer filled as the positions are reached, and position i costs one pass of each layer at i - not a
pass of the backbone over the map above it. Then the pair head emits the position's pairs slot by slot
(``emit``, the one slot loop), each symbol picked from the logits it gives. Two forms of the backbone and of the
head's three steps (atom logits, level logits, the state's advance), one interface:

- compiled (the CPU's: ``CompiledBackbone``, ``CompiledHead``): a position's backbone pass is one call into
  C (``_incremental.c``), and so is each of a slot's atom logits, level logits and state update; float64,
  each sum in one fixed order, each row on its own. One small image's position is a few dozen
  matrix-vector products on 64 channels, which cost less than PyTorch's overhead for the ~100 calls they
  take there.
- PyTorch (any device): ``IncrementalBackbone`` and ``TorchHead`` (``PairHead``'s own steps), tensor calls.

``incremental_backbone`` and ``head_steps`` pick the form for the prior's device (PyTorch's wherever the C
extension is missing: ``_native``). The forms sum in other orders than the full pass and teacher forcing: features
and logits agree with them, and with each other, to rounding (tested).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import _native
from ._native import incremental as _incremental  # None where the C extension is missing: the PyTorch forms run
from .codes import EMPTY, Codes
from .pixelsnail import CausalAttention, CausalConv2d, PairHead, PixelSNAIL, window_start

# Chooses one symbol per row from its logits [B, n] at (y, x, slot), given which rows are still open:
# draws it (sampling) or reads it from a coded stream (prior coding).
Pick = Callable[[torch.Tensor, tuple[int, int, int], torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample(prior: PixelSNAIL, n: int, temperature: float = 1.0, condition: Codes | None = None,
           generator: torch.Generator | None = None, labels: torch.Tensor | None = None) -> Codes:
    """Draw ``n`` code maps from ``prior`` position by position (the conditioning is embedded once), of the
    classes ``labels`` where the prior has classes (None: no class)."""

    def draw(logits: torch.Tensor, where: tuple[int, int, int], open_: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator).squeeze(-1)

    return generate(prior, n, draw, draw, condition, labels=labels)


def sample_maps(priors: list[PixelSNAIL], n: int, temperature: float = 1.0,
                generator: torch.Generator | None = None, labels: torch.Tensor | None = None) -> tuple[Codes, ...]:
    """``n`` images' code maps: the top map from the first prior, every later map from its prior given the top;
    of the classes ``labels`` (class-conditional priors only)."""
    top = sample(priors[0], n, temperature, generator=generator, labels=labels)
    return (top, *(sample(prior, n, temperature, condition=top, generator=generator, labels=labels)
                   for prior in priors[1:]))


@torch.no_grad()
def generate(prior: PixelSNAIL, n: int, pick_atom: Pick, pick_level: Pick, condition: Codes | None = None,
             size: tuple[int, int] | None = None, labels: torch.Tensor | None = None) -> Codes:
    """``n`` code maps of ``size`` (the prior's training size by default) built position by position in raster
    order, every symbol chosen by ``pick_atom`` / ``pick_level`` from the logits the prior gives it there:
    drawn (``sample``) or read from a coded stream (``prior_coding``)."""
    c = prior.config
    height, width = size or (c.height, c.width)
    prior.check_size(height, width)
    device = prior.conv_in.weight.device
    shape = (n, height, width, c.slots)
    codes = Codes(torch.full(shape, EMPTY, dtype=torch.long, device=device),
                  torch.zeros(shape, dtype=torch.long, device=device))
    was_training = prior.training
    prior.eval()  # no dropout while generating
    try:
        with torch.inference_mode():  # the loop's thousands of small calls, without autograd's bookkeeping
            backbone = prepared_backbone(prior, n, condition, (height, width), labels)
            steps = head_steps(prior, height * width)
            for y in range(height):
                for x in range(width):
                    atoms, levels = emit(steps, prior.head, backbone.features_at(y, x), pick_atom, pick_level, (y, x))
                    codes.atoms[:, y, x] = atoms  # codes stay ordinary tensors: made outside inference mode
                    codes.levels[:, y, x] = levels
                    backbone.write_codes(y, x, atoms, levels)
    finally:
        prior.train(was_training)
    return codes


def prepared_backbone(prior: PixelSNAIL, n: int, condition: Codes | None, size: tuple[int, int],
                      labels: torch.Tensor | None = None) -> CompiledBackbone | IncrementalBackbone:
    """``generate``'s incremental backbone for ``n`` maps of ``size`` (checked), given the top codes ``condition``
    where the prior is conditioned and the classes ``labels`` (None: no class) where it has classes; call it in
    inference mode, the prior in eval mode."""
    c = prior.config
    height, width = size
    prior.check_size(height, width)
    if c.condition is not None:
        if condition is None or condition.atoms.shape[0] != n:
            raise ValueError(f"this prior is conditioned on the top codes: pass {n} of them as condition")
        prior.check_condition(condition)
    if labels is not None:
        if not c.classes:
            raise ValueError("this prior is not class-conditional: it draws no class")
        if labels.shape != (n,):
            raise ValueError(f"pass one class label an image: [{n}], got {list(labels.shape)}")
    elif c.classes:
        labels = prior.no_class(n)
    # The condition one image at a time: an image's conditioning is the same bits in any batch.
    features = (torch.cat([prior.condition_features(condition[i : i + 1] if condition is not None else None,
                                                    (height, width), labels[i : i + 1] if labels is not None else None)
                           for i in range(n)]) if prior.conditioned else None)
    return incremental_backbone(prior, n, features, (height, width))


def incremental_backbone(prior: PixelSNAIL, n: int, condition_features: torch.Tensor | None,
                         size: tuple[int, int]) -> CompiledBackbone | IncrementalBackbone:
    """The incremental pass of ``prior`` (eval mode) for ``n`` maps of ``size``: compiled on the CPU (if built)."""
    form = CompiledBackbone if _compiled(prior) else IncrementalBackbone
    return form(prior, n, condition_features, size)


def head_steps(prior: PixelSNAIL, positions: int) -> CompiledHead | TorchHead:
    """The head's steps for a map of ``positions``: compiled on the CPU. PyTorch's advances the state from one table
    of every pair's advance when the map emits more pairs than the table has rows (a photograph's 10 slots), else by
    one MLP call a slot (a small map: the table would cost more); which of the two does not depend on the batch."""
    if _compiled(prior):
        return CompiledHead(prior)
    head = prior.head
    tabled = positions * (head.slots - 1) >= head.num_atoms * head.coef_levels
    return TorchHead(head, head.advances() if tabled else None)


def emit(steps: CompiledHead | TorchHead, head: PairHead, h: torch.Tensor, pick_atom: Pick, pick_level: Pick,
         position: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One position's pairs for each row of ``h`` [B, C]: atoms and levels [B, K], slot by slot, each symbol chosen
    by ``pick_*`` from the logits ``steps`` give (rows closed by END keep empty slots; a single level is no choice
    and is not picked) - the one slot loop of generation and prior coding, whichever form computes the steps."""
    b = h.shape[0]
    atoms = torch.full((b, head.slots), EMPTY, dtype=torch.long, device=h.device)
    levels = torch.zeros((b, head.slots), dtype=torch.long, device=h.device)
    state = steps.start(h)
    previous = torch.full((b,), -1, dtype=torch.long, device=h.device)
    open_ = torch.ones(b, dtype=torch.bool, device=h.device)
    for k in range(head.slots):
        drawn = pick_atom(steps.atom_logits(state, previous, k), (*position, k), open_)
        if head.variable:
            open_ = open_ & (drawn != head.end)
        safe = (drawn + head.atom_offset(k)).clamp_max(head.num_atoms - 1)
        level = (pick_level(steps.level_logits(state, safe), (*position, k), open_)
                 if head.coef_levels > 1 else levels[:, k])
        if head.variable:  # the slot is emitted by open rows only
            atoms[:, k], levels[:, k] = torch.where(open_, safe, EMPTY), torch.where(open_, level, 0)
        else:
            atoms[:, k], levels[:, k] = safe, level
        if k + 1 == head.slots:  # the last slot needs no advance
            break
        advanced = steps.advance(state, safe, level)
        if head.variable:
            state, previous = torch.where(open_.unsqueeze(-1), advanced, state), torch.where(open_, safe, previous)
        else:
            state, previous = advanced, safe
    return atoms, levels


class TorchHead:
    """The head's steps in PyTorch, on the prior's device: ``PairHead``'s own, the state's advance looked up from
    ``advances`` (``PairHead.advances()``) when given."""

    def __init__(self, head: PairHead, advances: torch.Tensor | None) -> None:
        self.head, self.advances = head, advances

    def start(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def atom_logits(self, state: torch.Tensor, previous: torch.Tensor, slot: int) -> torch.Tensor:
        return self.head.atom_logits(state, previous, slot)

    def level_logits(self, state: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        return self.head.level_logits(state, atoms)

    def advance(self, state: torch.Tensor, atoms: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if self.advances is None:
            return self.head.advance(state, atoms, levels)
        return state + self.advances[atoms, levels]


def compiled(prior: PixelSNAIL) -> bool:
    """Whether ``incremental_backbone`` and ``head_steps`` give the compiled forms for ``prior``."""
    return _compiled(prior)


def _compiled(prior: PixelSNAIL) -> bool:
    """Whether the prior runs in the compiled forms: it is on the CPU, and the C extension is built."""
    return _incremental is not None and prior.conv_in.weight.device.type == "cpu"


class CompiledBackbone:
    """``PixelSNAIL.backbone`` one position at a time on the CPU, in C (float64 whatever the prior's dtype;
    features returned in the prior's dtype). Every buffer is channels-last, and each convolution keeps only
    the taps its mask keeps, in raster order: the layout ``_incremental.c`` reads."""

    def __init__(self, prior: PixelSNAIL, n: int, condition_features: torch.Tensor | None,
                 size: tuple[int, int]) -> None:
        if _incremental is None:
            raise _native.missing("incremental", "CompiledBackbone")
        c = prior.config
        height, width = size
        blocks = [block for res_blocks in prior.blocks for block in res_blocks]
        in_radius, radius = prior.conv_in.kernel_size[0] // 2, blocks[0].conv_in.kernel_size[0] // 2
        self.n, self.channels, self.dtype = n, c.channels, prior.conv_in.weight.dtype

        def padded(radius: int, count: int = 1) -> np.ndarray:
            return np.zeros((count, n, height + 2 * radius, width + 2 * radius, c.channels))

        # The top map's term of every residual block, one image at a time: the same bits in any batch.
        conditions = (torch.stack([torch.cat([block.condition(condition_features[i : i + 1]) for i in range(n)])
                                   .permute(0, 2, 3, 1) for block in blocks])
                      if condition_features is not None else torch.zeros(0))
        weights = _kernel_weights(prior)
        arrays = (*weights.backbone, _array(conditions), *weights.attention,
                  padded(in_radius), padded(radius, len(blocks)), padded(radius, len(blocks)))  # the state
        dims = (n, c.channels, height, width, in_radius, radius, len(blocks), c.res_per_block, c.heads, c.num_atoms,
                c.coef_levels, c.slots, c.attention_rows, prior.position is not None, condition_features is not None)
        self._plan = _incremental.plan(arrays, dims)
        self._arrays = arrays  # the plan reads and writes these: they live as long as it
        # Attention's heads over two threads at later positions where PyTorch may use two: the same bits.
        _incremental.threads(self._plan, torch.get_num_threads())

    def write_codes(self, y: int, x: int, atoms: torch.Tensor, levels: torch.Tensor) -> None:
        """Embed the pairs just chosen at (y, x) (atoms and levels [B, K]): later positions' input."""
        _incremental.write(self._plan, y, x, atoms.to(torch.int64).contiguous().numpy(),
                           levels.to(torch.int64).contiguous().numpy())

    def features_at(self, y: int, x: int) -> torch.Tensor:
        """The backbone's features [B, C] at (y, x), from the codes written at the positions before it."""
        out = np.empty((self.n, self.channels))
        _incremental.step(self._plan, y, x, out)
        return torch.from_numpy(out).to(self.dtype)

    def step(self, y: int, x: int, out: np.ndarray) -> None:
        """``features_at`` in float64 into ``out`` [B, C] (C-contiguous), without PyTorch."""
        _incremental.step(self._plan, y, x, out)

    def write(self, y: int, x: int, atoms: np.ndarray, levels: np.ndarray) -> None:
        """``write_codes`` from int64 arrays [B, K] (C-contiguous), without PyTorch."""
        _incremental.write(self._plan, y, x, atoms, levels)


class CompiledHead:
    """The head's steps on the CPU: each slot's atom logits, level logits and state update one call into C each
    (float64 whatever the prior's dtype: the state, and the logits handed to the picks)."""

    def __init__(self, prior: PixelSNAIL) -> None:
        if _incremental is None:
            raise _native.missing("incremental", "CompiledHead")
        self.head = head = prior.head
        self._kernel = _incremental.head(_kernel_weights(prior).head, (
            prior.config.channels, head.num_atoms, head.coef_levels, head.slots, head.stage_atoms, head.variable))
        self._atom_width = (head.stage_atoms or head.num_atoms) + head.variable

    def start(self, h: torch.Tensor) -> torch.Tensor:
        return h.to(torch.float64).contiguous()

    def atom_logits(self, state: torch.Tensor, previous: torch.Tensor, slot: int) -> torch.Tensor:
        logits = np.empty((len(state), self._atom_width))
        _incremental.atom_logits(self._kernel, state.numpy(), previous.contiguous().numpy(), len(state), slot,
                                 self.head.last_atom(slot), logits)
        return torch.from_numpy(logits)

    def level_logits(self, state: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        logits = np.empty((len(state), self.head.coef_levels))
        _incremental.level_logits(self._kernel, state.numpy(), atoms.contiguous().numpy(), len(state), logits)
        return torch.from_numpy(logits)

    def advance(self, state: torch.Tensor, atoms: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        advanced = np.empty((len(state), state.shape[1]))
        _incremental.advance(self._kernel, state.numpy(), atoms.contiguous().numpy(), levels.contiguous().numpy(),
                             len(state), advanced)
        return torch.from_numpy(advanced)

    # The same calls on numpy arrays (float64 and int64, C-contiguous), without PyTorch: prior coding's fixed-count loops.
    def atom_logits_into(self, state: np.ndarray, previous: np.ndarray, slot: int, out: np.ndarray) -> None:
        _incremental.atom_logits(self._kernel, state, previous, len(state), slot, self.head.last_atom(slot), out)

    def advance_into(self, state: np.ndarray, atoms: np.ndarray, levels: np.ndarray, out: np.ndarray) -> None:
        _incremental.advance(self._kernel, state, atoms, levels, len(state), out)

    def known_logits(self, features: np.ndarray, atoms: np.ndarray, levels: np.ndarray, out: np.ndarray) -> None:
        """A fixed-count head's atom logits at every slot of rows whose pairs are known (features [R, C], atoms and
        levels [R, K]) into ``out`` [R, K, width]: the bits of ``atom_logits`` and ``advance`` slot by slot; it runs
        without the GIL (other rows can run in other threads)."""
        lasts = np.array([self.head.last_atom(k) for k in range(self.head.slots)], dtype=np.int64)
        _incremental.known_logits(self._kernel, features, atoms, levels, lasts, len(features), out)


class _Weights(NamedTuple):
    """A prior's weights as ``_incremental`` reads them (float64, channels-last), in the order it takes them."""

    backbone: tuple[np.ndarray, ...]  # embeddings, conv_in, position, residual blocks' convolutions
    attention: tuple[np.ndarray, ...]
    head: tuple[np.ndarray, ...]


# Each prior's weights in the kernels' layout, made once: 3 MB of copies, a few ms, per generated batch otherwise.
_KERNEL_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _kernel_weights(prior: PixelSNAIL) -> _Weights:
    """The prior's ``_Weights``, made again when a parameter has changed since: another tensor, dtype, or
    in-place update (a training step, load_state_dict). Changes PyTorch does not count are not seen - writes
    through ``.data``, or to inference tensors (made under ``torch.inference_mode``, never cached here)."""
    parameters = list(prior.parameters())
    if any(p.is_inference() for p in parameters):
        return _made_weights(prior)
    # The parameters themselves are kept with the key: their addresses cannot be reused while it lives.
    state = tuple((p.data_ptr(), p.dtype, p._version) for p in parameters)
    made = _KERNEL_WEIGHTS.get(prior)
    if made is None or made[0] != state:
        made = _KERNEL_WEIGHTS[prior] = (state, _made_weights(prior), [p.detach() for p in parameters])
    return made[1]


def _made_weights(prior: PixelSNAIL) -> _Weights:
    """``_Weights`` from the prior's parameters as they are now."""
    blocks = [block for res_blocks in prior.blocks for block in res_blocks]
    position = prior.position[0].permute(1, 2, 0) if prior.position is not None else torch.zeros(0)
    head = prior.head
    return _Weights(
        backbone=tuple(_array(tensor) for tensor in (
            prior.embed.atom.weight, prior.embed.level.weight, _kept_taps(prior.conv_in), prior.conv_in.bias,
            position, torch.stack([_kept_taps(block.conv_in) for block in blocks]),
            torch.stack([block.conv_in.bias for block in blocks]),
            torch.stack([_kept_taps(block.conv_gate) for block in blocks]),
            torch.stack([block.conv_gate.bias for block in blocks]))),
        attention=tuple(_array(tensor) for tensor in (
            torch.stack([attention.qkv.weight.flatten(1) for attention in prior.attention]),
            torch.stack([attention.qkv.bias for attention in prior.attention]),
            torch.stack([attention.out.weight.flatten(1) for attention in prior.attention]),
            torch.stack([attention.out.bias for attention in prior.attention]))),
        head=tuple(_array(tensor) for tensor in (
            head.atom_out.weight, head.atom_out.bias, head.atom_in.weight, head.level_out.weight,
            head.level_out.bias, head.pair_atom.weight, head.pair_level.weight, head.update[0].weight,
            head.update[0].bias, head.update[2].weight, head.update[2].bias)))


def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float64).numpy())


def _kept_taps(conv: CausalConv2d) -> torch.Tensor:
    """A masked convolution's weight [out, in, k, k] as [out, taps x in]: the taps its mask keeps, in raster
    order, each with its input channels (a channels-last window's order)."""
    rows, columns = conv.mask.nonzero(as_tuple=True)
    return conv.weight[:, :, rows, columns].permute(0, 2, 1).flatten(1)


class IncrementalBackbone:
    """``PixelSNAIL.backbone`` one position at a time in PyTorch, on the prior's device: position i costs one
    pass of each layer at i (a k x k window of a convolution's input, attention over the cached keys and values of positions <= i),
    not a pass over the map above it. Buffers are zero-padded by the kernel's half width, as the full
    convolutions pad; the masks hide what is not yet filled, as they hide the future in the full pass.
    What does not depend on the codes - the top map's term in every residual block - is computed for the
    whole map at once. A position's work is a few dozen calls on vectors, run in inference mode, each in the
    cheapest form of its operation (a matrix-vector product for a convolution and for a 1x1 one).
    The sums run in another order than the full pass's: the features agree to rounding (tested).
    """

    def __init__(self, prior: PixelSNAIL, n: int, condition_features: torch.Tensor | None,
                 size: tuple[int, int]) -> None:
        c = prior.config
        height, self.width = size
        self.prior = prior
        like = prior.conv_in.weight

        def padded(kernel: int) -> torch.Tensor:
            r = kernel // 2
            return like.new_zeros(n, c.channels, height + 2 * r, self.width + 2 * r)

        self.conv_in = _WindowProduct(prior.conv_in)
        self.embedded = padded(self.conv_in.k)
        # Per residual block: its two convolutions, their inputs (elu(x), and the hidden activation), and the
        # top map's term at every position [B, 2C, H, W] (None without a condition).
        self.block_convs = [[(_WindowProduct(block.conv_in), _WindowProduct(block.conv_gate)) for block in blocks]
                            for blocks in prior.blocks]
        self.block_buffers = [[(padded(first.k), padded(second.k)) for first, second in convs]
                              for convs in self.block_convs]
        self.block_conditions = [[block.condition(condition_features) if block.condition is not None else None
                                  for block in blocks] for blocks in prior.blocks]
        positions = height * self.width
        self.attention = [_AttentionStep(attention, n, positions, self.width, like) for attention in prior.attention]

    def write_codes(self, y: int, x: int, atoms: torch.Tensor, levels: torch.Tensor) -> None:
        """Embed the pairs just chosen at (y, x) (atoms and levels [B, K]): later positions' input."""
        pairs = Codes(atoms[:, None, None], levels[:, None, None])
        self.conv_in.write(self.embedded, y, x, self.prior.embed(pairs)[:, :, 0, 0])

    def features_at(self, y: int, x: int) -> torch.Tensor:
        """The backbone's features [B, C] at (y, x), from the codes written at the positions before it."""
        prior = self.prior
        h = self.conv_in(self.embedded, y, x)
        if prior.position is not None:
            h = h + prior.position[:, :, y, x]
        for convs, buffers, conditions, attention in zip(self.block_convs, self.block_buffers, self.block_conditions,
                                                         self.attention):
            for (first, second), (inputs, hidden), condition in zip(convs, buffers, conditions):
                first.write(inputs, y, x, F.elu(h))
                second.write(hidden, y, x, F.elu(first(inputs, y, x)))
                gate = second(hidden, y, x)
                if condition is not None:
                    gate = gate + condition[:, :, y, x]
                h = h + F.glu(gate, dim=1)
            h = attention(h, y * self.width + x)
        return F.elu(h)


class _AttentionStep:
    """``CausalAttention`` for one query position: its key and value are cached, and it attends to the cached
    keys and values of the positions up to it (from its window's start)."""

    def __init__(self, attention: CausalAttention, n: int, positions: int, width: int, like: torch.Tensor) -> None:
        channels = attention.out.out_channels
        self.width, self.rows = width, attention.rows
        self.heads, head_dim = attention.heads, channels // attention.heads
        self.qkv_weight, self.qkv_bias = attention.qkv.weight.reshape(3 * channels, channels), attention.qkv.bias
        self.out_weight, self.out_bias = attention.out.weight.reshape(channels, channels), attention.out.bias
        self.keys = like.new_zeros(n, self.heads, positions, head_dim)
        self.values = like.new_zeros(n, self.heads, positions, head_dim)

    def __call__(self, h: torch.Tensor, index: int) -> torch.Tensor:
        """``h`` [B, C] at position ``index`` -> the block's output there (with its residual)."""
        b, c = h.shape
        q, k, v = F.linear(h, self.qkv_weight, self.qkv_bias).reshape(b, 3, self.heads, 1, c // self.heads).unbind(1)
        self.keys[:, :, index : index + 1], self.values[:, :, index : index + 1] = k, v
        first = window_start(index, self.width, self.rows)
        attended = F.scaled_dot_product_attention(q, self.keys[:, :, first : index + 1],
                                                  self.values[:, :, first : index + 1])
        return h + F.linear(attended.reshape(b, c), self.out_weight, self.out_bias)


class _WindowProduct:
    """A causal convolution at one position: its masked kernel as a matrix over the k x k window of a
    zero-padded input buffer (one matrix-vector product: a convolution call on a k x k input costs more)."""

    def __init__(self, conv: CausalConv2d) -> None:
        self.k, self.pad = conv.kernel_size[0], conv.kernel_size[0] // 2
        self.weight = (conv.weight * conv.mask).reshape(conv.out_channels, -1)
        self.bias = conv.bias

    def __call__(self, padded: torch.Tensor, y: int, x: int) -> torch.Tensor:
        window = padded[:, :, y : y + self.k, x : x + self.k].reshape(padded.shape[0], -1)
        return F.linear(window, self.weight, self.bias)

    def write(self, padded: torch.Tensor, y: int, x: int, value: torch.Tensor) -> None:
        """Put this convolution's input at (y, x) into its buffer."""
        padded[:, :, y + self.pad, x + self.pad] = value
