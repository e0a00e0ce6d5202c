"""PixelSNAIL prior over code maps of (atom, coefficient level) pairs (Chen et al. 2018; VQ-VAE-2).

p(codes) = prod_i p(pairs_i | pairs_<i): positions in raster order, modelled by a causal backbone
(masked gated residual convolutions and causal self-attention). Inside a position a small
autoregressive head emits the pairs in canonical order - atoms ascending, each followed by its
coefficient level - and, where the count varies (sparse codes), an END token. Ascending order makes
the probabilities exact over sets: the head masks every atom not above the previous one (and, for
a fixed count K, those that leave too little room). Vanilla VQ is K=1 with a single level. A ranked
code's slot k only ever holds a rank-k pair (``stage_atoms`` M: atoms k*M .. k*M+M-1; a residual VQ's
stage k, a quantised pursuit's k-th pick), so there the head's slot k is an M-way choice among its
rank's entries (and END), not a K*M-way one: the same probabilities, renormalised over the symbols that
can occur, at a K-th of the cost.

The bottom prior of a two-level model is conditioned on the top codes: their embedding is
computed once, upsampled, and added in every residual block. A prior with ``classes`` (CIFAR-10's, say) is
also conditioned on an image's class, as VQ-VAE-2's ImageNet priors are: a class embedding added in every
residual block. Its last row stands for "no class": training replaces a share of the labels by it, so the
same prior also models codes whose class is unknown - what coding and ``bits_per_image`` use.

Positions (``PriorConfig.positions``): ``learned`` adds an embedding per position, so the prior
models maps of its training size only; ``none`` adds nothing - the causal convolutions' zero
padding still tells the borders - and the prior codes maps of any size (a photograph's, with a
prior trained on crops). Attention (``PriorConfig.attention_rows``) reaches every earlier position, as in
PixelSNAIL, or with R > 0 a position's own row and the R rows above: a large map's positions then cost the same
wherever they are (a photograph's code map has thousands), and crops and photographs show it the same neighbourhood.

The baseline to beat is the codec's factorised model (``entropy_coding.FrequencyModel``): the same atom,
level and count frequencies at every position.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .codes import EMPTY, Codes, atom_window, last_atom
from .config import PRIOR_POSITIONS, PriorTrainConfig

_TRAIN = PriorTrainConfig()


@dataclass(frozen=True)
class PriorConfig:
    num_atoms: int
    coef_levels: int
    slots: int  # K: pairs per position (exact for OMP and vanilla, at most for the LASSO)
    variable_count: bool  # sparse codes: an END token closes a position
    height: int
    width: int
    channels: int = _TRAIN.channels  # the sizes params.yaml's prior section sets: its defaults
    blocks: int = _TRAIN.blocks
    res_per_block: int = _TRAIN.res_per_block
    kernel: int = 3
    heads: int = 4
    dropout: float = _TRAIN.dropout
    condition: dict | None = None  # the top map's PriorConfig fields (num_atoms, coef_levels, slots, height, width)
    positions: str = _TRAIN.positions  # learned: an embedding per position (training size only) | none: any size
    stage_atoms: int = 0  # M > 0: slot k holds one of atoms k*M .. k*M+M-1 (``config.ranked``); 0: any atom
    classes: tuple[str, ...] = ()  # the class names it can be conditioned on (none: unconditional)
    attention_rows: int = _TRAIN.attention_rows  # > 0: attention over the current row and this many above; 0: all


def _raster_mask(kernel: int, include_center: bool) -> torch.Tensor:
    mask = torch.ones(kernel, kernel)
    c = kernel // 2
    mask[c, c + (1 if include_center else 0):] = 0
    mask[c + 1:] = 0
    return mask


class CausalConv2d(nn.Conv2d):
    """A convolution that sees only earlier positions in raster order (and the centre, unless ``strict``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, strict: bool) -> None:
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        self.register_buffer("mask", _raster_mask(kernel, include_center=not strict), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dropout: float, condition_channels: int = 0) -> None:
        super().__init__()
        self.conv_in = CausalConv2d(channels, channels, kernel, strict=False)
        self.conv_gate = CausalConv2d(channels, 2 * channels, kernel, strict=False)
        self.condition = nn.Conv2d(condition_channels, 2 * channels, 1) if condition_channels else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        h = self.dropout(F.elu(self.conv_in(F.elu(x))))
        h = self.conv_gate(h)
        if self.condition is not None:
            h = h + self.condition(condition)
        return x + F.glu(h, dim=1)


def window_start(index: int, width: int, rows: int) -> int:
    """The first position that position ``index`` of a map ``width`` wide attends to: the start of the row
    ``rows`` above its own (0 where ``rows`` is 0: every earlier position)."""
    return max(0, (index // width - rows) * width) if rows else 0


def _window_mask(height: int, width: int, rows: int, device: torch.device) -> torch.Tensor:
    """[HW, HW] True where position i may attend to position j: j <= i, within ``rows`` rows above i's own."""
    index = torch.arange(height * width, device=device)
    row = index // width
    return (index[None, :] <= index[:, None]) & (row[None, :] >= row[:, None] - rows)


class CausalAttention(nn.Module):
    """Self-attention over positions in raster order: position i attends to positions j <= i - all of them, or with
    ``rows`` > 0 those in its own row and the ``rows`` rows above (a window: the cost of a position stays bounded
    on a large map, and training crops and photographs see the same neighbourhood)."""

    def __init__(self, channels: int, heads: int, rows: int = 0) -> None:
        super().__init__()
        self.heads, self.rows = heads, rows
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        window = dict(attn_mask=_window_mask(h, w, self.rows, x.device)) if self.rows else dict(is_causal=True)
        attended = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2),
                                                  **window)
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class PairEmbedding(nn.Module):
    """A position's pairs -> one vector: the sum of atom and level embeddings over present slots."""

    def __init__(self, num_atoms: int, coef_levels: int, channels: int) -> None:
        super().__init__()
        self.atom = nn.Embedding(num_atoms + 1, channels, padding_idx=num_atoms)  # last row: empty slot
        self.level = nn.Embedding(coef_levels, channels)
        self.num_atoms = num_atoms

    def forward(self, codes: Codes) -> torch.Tensor:
        present = codes.present.unsqueeze(-1)
        atoms = torch.where(codes.atoms == EMPTY, self.num_atoms, codes.atoms)
        pairs = self.atom(atoms) + self.level(codes.levels) * present
        return pairs.sum(dim=3).permute(0, 3, 1, 2)  # [B, C, H, W]


class PixelSNAIL(nn.Module):
    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = PairEmbedding(c.num_atoms, c.coef_levels, c.channels)
        if c.positions not in PRIOR_POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(PRIOR_POSITIONS)}; got {c.positions!r}")
        self.position = nn.Parameter(torch.zeros(1, c.channels, c.height, c.width)) if c.positions == "learned" else None
        self.conv_in = CausalConv2d(c.channels, c.channels, 2 * c.kernel + 1, strict=True)
        condition_channels = c.channels if self.conditioned else 0
        # one row a class, the last for "no class"
        self.class_embed = nn.Embedding(len(c.classes) + 1, c.channels) if c.classes else None
        if c.condition is not None:
            top = c.condition
            self.condition_embed = PairEmbedding(top["num_atoms"], top["coef_levels"], c.channels)
            self.condition_net = nn.Sequential(
                nn.Conv2d(c.channels, c.channels, 3, padding=1), nn.ELU(), nn.Conv2d(c.channels, c.channels, 3, padding=1))
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleList()
        for _ in range(c.blocks):
            self.blocks.append(nn.ModuleList(
                GatedResBlock(c.channels, c.kernel, c.dropout, condition_channels) for _ in range(c.res_per_block)))
            self.attention.append(CausalAttention(c.channels, c.heads, c.attention_rows))
        self.head = PairHead(c)

    @property
    def conditioned(self) -> bool:
        """Does every residual block take a condition term (the top codes, a class, or both)?"""
        return self.config.condition is not None or bool(self.config.classes)

    def no_class(self, count: int) -> torch.Tensor:
        """``count`` labels that say "no class" (what coding uses: the class of an image is not sent)."""
        return torch.full((count,), len(self.config.classes), dtype=torch.long, device=self.conv_in.weight.device)

    def class_labels(self, names: list[str]) -> torch.Tensor:
        """Class names -> the labels ``log_prob`` and ``generation.sample`` take."""
        unknown = sorted(set(names) - set(self.config.classes))
        if unknown:
            known = ", ".join(self.config.classes) or "none: this prior is not class-conditional"
            raise ValueError(f"unknown class {', '.join(unknown)}; this prior's classes: {known}")
        return torch.tensor([self.config.classes.index(name) for name in names], device=self.conv_in.weight.device)

    def condition_features(self, condition: Codes | None, size: tuple[int, int] | None = None,
                           labels: torch.Tensor | None = None) -> torch.Tensor:
        """The condition term once per batch, at the map's size (the training size by default): the top codes'
        embedding, upsampled, plus the labels' class embedding (``no_class`` where None)."""
        c = self.config
        size = size or (c.height, c.width)
        h = None
        if c.condition is not None:
            h = F.interpolate(self.condition_net(self.condition_embed(condition)), size=size, mode="nearest")
        if self.class_embed is not None:
            count = condition.atoms.shape[0] if condition is not None else len(labels)
            labels = self.no_class(count) if labels is None else labels
            term = self.class_embed(labels)[:, :, None, None].expand(-1, -1, *size)
            h = term if h is None else h + term
        return h

    def backbone(self, codes: Codes, condition_features: torch.Tensor | None) -> torch.Tensor:
        """Features [B, C, H, W] where position i depends only on the codes at positions < i."""
        h = self.conv_in(self.embed(codes))
        if self.position is not None:
            h = h + self.position
        for res_blocks, attention in zip(self.blocks, self.attention):
            for block in res_blocks:
                h = block(h, condition_features)
            h = attention(h)
        return F.elu(h)

    def log_prob(self, codes: Codes, condition: Codes | None = None, labels: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Natural-log probability of each image's codes, [B] (exact: the head's masks normalise), given the top
        codes (``condition``) and the images' class ``labels`` where the prior has them (None: no class)."""
        self._check(codes, condition, labels)
        size = tuple(codes.atoms.shape[1:3])
        if self.class_embed is not None and labels is None:
            labels = self.no_class(codes.atoms.shape[0])
        features = self.condition_features(condition, size, labels) if self.conditioned else None
        h = self.backbone(codes, features).permute(0, 2, 3, 1)  # [B, H, W, C]
        return self.head.log_prob(h, codes).sum(dim=(1, 2))

    def check_size(self, height: int, width: int) -> None:
        """A prior with learned positions models maps of its training size only."""
        c = self.config
        if c.positions == "learned" and (height, width) != (c.height, c.width):
            raise ValueError(f"this prior learned its positions on {c.height}x{c.width} code maps and cannot model "
                             f"{height}x{width} ones (a prior with positions 'none' models any size)")

    def _check(self, codes: Codes, condition: Codes | None, labels: torch.Tensor | None = None) -> None:
        c = self.config
        if labels is not None:
            if not c.classes:
                raise ValueError("this prior is not class-conditional: pass no labels")
            if labels.shape != codes.atoms.shape[:1] or labels.min() < 0 or labels.max() > len(c.classes):
                raise ValueError(f"labels must be [B] class indices 0..{len(c.classes)} ({len(c.classes)}: no class)")
        if codes.atoms.dim() != 4 or codes.atoms.shape[3] != c.slots:
            raise ValueError(f"this prior models code maps [B, H, W, {c.slots}]; got {list(codes.atoms.shape)}")
        self.check_size(*codes.atoms.shape[1:3])
        if (c.condition is not None) != (condition is not None):
            raise ValueError("pass the top codes as condition exactly when the prior is conditioned on them")
        if condition is not None:
            self.check_condition(condition)

    def check_condition(self, condition: Codes) -> None:
        top = self.config.condition
        if condition.atoms.dim() != 4 or condition.atoms.shape[3] != top["slots"]:
            raise ValueError(f"the condition (top codes) must be [B, H, W, {top['slots']}]; "
                             f"got {list(condition.atoms.shape)}")
        if self.config.positions == "learned" and tuple(condition.atoms.shape[1:3]) != (top["height"], top["width"]):
            raise ValueError(f"the condition (top codes) must be [B, {top['height']}, {top['width']}, {top['slots']}]; "
                             f"got {list(condition.atoms.shape)}")

    @property
    def arguments(self) -> dict:
        """The config as checkpoints keep it (an unconditional prior's without ``classes``: the same bytes as
        before priors had classes)."""
        arguments = asdict(self.config)
        if not arguments["classes"]:
            del arguments["classes"]
        return arguments


class PairHead(nn.Module):
    """p(pairs of one position | backbone feature), autoregressive over the slots."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        c = config
        self.num_atoms, self.slots, self.variable, self.stage_atoms = c.num_atoms, c.slots, c.variable_count, c.stage_atoms
        self.coef_levels = c.coef_levels
        if c.stage_atoms and c.stage_atoms * c.slots != c.num_atoms:
            raise ValueError(f"stage_atoms {c.stage_atoms} needs num_atoms = slots x stage_atoms "
                             f"({c.slots} x {c.stage_atoms}); got num_atoms {c.num_atoms}")
        self.end = c.stage_atoms or c.num_atoms  # the END token's index in a slot's atom logits, when counts vary
        self.atom_out = nn.Linear(c.channels, c.num_atoms + (1 if c.variable_count else 0))
        self.atom_in = nn.Embedding(c.num_atoms, c.channels)
        self.level_out = nn.Linear(c.channels, c.coef_levels)
        self.pair_atom = nn.Embedding(c.num_atoms, c.channels)
        self.pair_level = nn.Embedding(c.coef_levels, c.channels)
        self.update = nn.Sequential(nn.Linear(c.channels, c.channels), nn.ELU(), nn.Linear(c.channels, c.channels))

    def atom_offset(self, slot: int) -> int:
        """The first atom of slot ``slot``'s choices: its logits' index i stands for atom offset + i."""
        return slot * self.stage_atoms

    def last_atom(self, slot: int) -> int:
        """The highest atom ``slot`` may hold: a fixed count leaves room for the slots after it."""
        return last_atom(self.num_atoms, 0 if self.variable else self.slots - slot - 1)

    def atom_logits(self, state: torch.Tensor, previous: torch.Tensor, slot: int) -> torch.Tensor:
        """Logits over atoms (+ END), with the atoms a canonical code cannot hold there masked out
        (``codes.atom_window``); ranked, over the M atoms of the slot's rank only (ascending by construction)."""
        if self.stage_atoms:
            rows = slice(self.atom_offset(slot), self.atom_offset(slot + 1))
            weight, bias = self.atom_out.weight[rows], self.atom_out.bias[rows]
            if self.variable:  # and END, the last row
                weight, bias = torch.cat([weight, self.atom_out.weight[-1:]]), torch.cat([bias, self.atom_out.bias[-1:]])
            return F.linear(state, weight, bias)
        logits = F.linear(state, self.atom_out.weight, self.atom_out.bias)
        if slot == 0 and (self.variable or self.slots == 1):  # nothing before it, nothing after it to leave room for
            return logits
        allowed = atom_window(torch.arange(self.num_atoms, device=state.device), previous, self.last_atom(slot))
        if self.variable:
            allowed = torch.cat([allowed, torch.ones_like(allowed[..., :1])], dim=-1)  # END always allowed
        return logits.masked_fill(~allowed, float("-inf"))

    def level_logits(self, state: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """Logits over the coefficient levels given the atoms just emitted."""
        return F.linear(state + F.embedding(atoms, self.atom_in.weight), self.level_out.weight, self.level_out.bias)

    def advance(self, state: torch.Tensor, atoms: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """The state after emitting the pair (atom, level)."""
        return state + self.update(self.pair_atom(atoms) + self.pair_level(levels))

    def advances(self) -> torch.Tensor:
        """``advance``'s increment for every pair [num_atoms, coef_levels, C]: it depends on the pair alone, so
        generation looks it up (one MLP pass for all pairs instead of one per emitted slot)."""
        return self.update(self.pair_atom.weight[:, None] + self.pair_level.weight[None])

    def log_prob(self, h: torch.Tensor, codes: Codes) -> torch.Tensor:
        """[B, H, W] log-probabilities of the given pairs under teacher forcing."""
        state = h
        previous = torch.full(h.shape[:-1], -1, dtype=torch.long, device=h.device)
        total = torch.zeros(h.shape[:-1], device=h.device)
        open_ = torch.ones(h.shape[:-1], dtype=torch.bool, device=h.device)  # position not yet closed by END
        for k in range(self.slots):
            atoms, levels = codes.atoms[..., k], codes.levels[..., k]
            present = atoms != EMPTY
            logp_atoms = F.log_softmax(self.atom_logits(state, previous, k), dim=-1)
            target = torch.where(present, atoms - self.atom_offset(k), self.end if self.variable else 0)
            atom_term = logp_atoms.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            total = total + torch.where(open_, atom_term, 0.0)
            safe_atoms = atoms.clamp_min(0)
            logp_levels = F.log_softmax(self.level_logits(state, safe_atoms), dim=-1)
            level_term = logp_levels.gather(-1, levels.unsqueeze(-1)).squeeze(-1)
            total = total + torch.where(present & open_, level_term, 0.0)
            state = torch.where(present.unsqueeze(-1), self.advance(state, safe_atoms, levels), state)
            previous = torch.where(present, atoms, previous)
            open_ = open_ & present
        return total


def bits(log_prob: torch.Tensor) -> torch.Tensor:
    """Natural-log probabilities -> bits."""
    return -log_prob / math.log(2)
