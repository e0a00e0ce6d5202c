"""Quantizers: encoder features [B, C, H, W] -> (z_q, codes, loss, stats), behind one interface.

- ``VectorQuantizerEMA`` (``vanilla``): VQ-VAE-2's nearest-neighbour codebook, learned by
  exponential moving averages of the assigned encoder outputs (van den Oord et al. 2017, App. A.1).
- ``ResidualVQ`` (``rvq``): K stages of such codebooks, stage k coding what stages 1..k-1 left
  (SoundStream, Zeghidour et al. 2021): the hard-selection rival of K atoms.
- ``FiniteScalarQuantizer`` (``fsq``): a few projected dimensions rounded to fixed grids (Mentzer et al.
  2023), no codebook to learn: the anchor of the comparisons.
- ``QuantisedPursuit`` (``qmp``): matching pursuit that picks each (atom, quantised value) pair on the residual
  of the pairs already quantised, per-rank symmetric value tables, rate-distortion-optimised pair counts.
- ``SparseQuantizer`` (``omp`` / ``lasso``): each latent vector is coded by a few atoms of a
  unit-norm dictionary. The dictionary is an ``nn.Parameter`` and learns twice over: from the
  reconstruction loss through the task-driven gradient of the sparse code (Mairal et al. 2010)
  and from the dictionary loss ``||D c - sg(z)||^2``. The encoder learns by the straight-through
  estimator ``z + sg(z_q - z)`` (``encoder_gradient``): the task-driven gradient alone reaches it
  only inside the span of the chosen atoms - nothing at all at K=1 with unit-norm latents. Each
  coefficient is quantised to one of ``coef_levels`` values (``coef_quantizer``): ``uniform`` over
  [-m, m], m an EMA of the 99.9th percentile of |c|, or ``learned``, a scalar codebook learned by
  EMA of the coefficients each value quantises. A pair whose value quantises to zero is not coded.

All start from data (codebook = k-means of encoder outputs, dictionary = MOD fit on them) on their
first training batch, and re-seed codes/atoms that fell out of use from the worst-coded encoder
outputs: with a random start VQ-VAEs collapse on small data. Under torch.distributed the
statistics are summed and the re-seeds broadcast from rank 0, so every worker keeps the same tables.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .codes import EMPTY, Codes, canonical_order
from .config import COEF_QUANTIZERS, ENCODER_GRADIENTS, FSQ_LEVELS, ModelConfig
from .sparse_coding import init_dictionary_from_data, kmeans, normalize_atoms, sparse_pairs

USAGE_DECAY = 0.9  # usage statistics follow the last ~10 steps
DEAD_BELOW = 1 / 16  # an atom used 16x less than uniform usage is dead
COEF_QUANTILE = 0.999  # share of |c| inside the coefficient range
ASSIGN_ROWS = 4096  # residual VQ outside training: vectors a nearest-entry search block holds
_DEFAULT = ModelConfig()  # the one source of the quantizers' defaults (build_quantizer passes every field)


class QuantizerOutput(NamedTuple):
    z_q: torch.Tensor  # [B, C, H, W]
    codes: Codes  # [B, H, W, K]
    loss: torch.Tensor  # scalar: commitment (+ dictionary) loss
    stats: dict[str, torch.Tensor]


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(source: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Exactly ``value`` in the forward pass; the identity's gradient to ``source`` in the backward."""
    return _StraightThrough.apply(source, value)


def usage_stats(codes: Codes, num_atoms: int, coef_levels: int) -> dict[str, torch.Tensor]:
    """Atom-usage perplexity, share of atoms unused in this batch, mean pairs per position, level histogram."""
    present = codes.present
    counts = torch.bincount(codes.atoms[present], minlength=num_atoms).float()
    p = counts / counts.sum().clamp_min(1)
    return {
        "perplexity": torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()),
        "dead_share": (counts == 0).float().mean(),
        "nonzeros_per_position": present.sum(dim=-1).float().mean(),
        "level_histogram": torch.bincount(codes.levels[present], minlength=coef_levels),
    }


def _flatten(z: torch.Tensor) -> torch.Tensor:
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _unflatten(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    b, c, h, w = like.shape
    return flat.reshape(b, h, w, c).permute(0, 3, 1, 2)


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _all_min(value: int, device: torch.device) -> int:
    t = torch.tensor(value, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def _from_rank0(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, src=0)
    return t


class _Quantizer(nn.Module):
    """Shared bookkeeping: first-batch initialisation, usage statistics, dead-entry restarts."""

    def __init__(self, dim: int, num_atoms: int, slots: int, coef_levels: int, commitment: float,
                 restart_dead: bool) -> None:
        super().__init__()
        # slots: pairs per position in the codes (K); coef_levels: coefficient levels (1 for vanilla).
        self.dim, self.num_atoms, self.slots, self.coef_levels = dim, num_atoms, slots, coef_levels
        self.commitment, self.restart_dead = commitment, restart_dead
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("usage", torch.full((num_atoms,), 1.0 / num_atoms))

    def _track_usage(self, atoms: torch.Tensor) -> torch.Tensor:
        """Update the usage EMA from this batch's atoms [M, K]; return the dead ones (bool [N])."""
        counts = _all_sum(torch.bincount(atoms[atoms != EMPTY], minlength=self.num_atoms).float())
        if _all_sum(torch.tensor(float(atoms.shape[0]), device=atoms.device)) == 0:
            return torch.zeros_like(self.usage, dtype=torch.bool)  # no vector to code (a dropped stage)
        # vectors given but none coded (a dead map): every atom's usage decays, so they all restart
        self.usage.mul_(USAGE_DECAY).add_(counts / counts.sum().clamp_min(1), alpha=1 - USAGE_DECAY)
        return self.usage < DEAD_BELOW / self.num_atoms

    @property
    def code_atoms(self) -> int:
        """The atom ids a code may hold: the dictionary's or codebook's size (a residual VQ stacks its stages')."""
        return self.num_atoms

    def after_step(self) -> None:
        """Called by the training loop after each optimizer step."""

    def coding_target(self, z: torch.Tensor) -> torch.Tensor:
        """What the quantizer approximates, channels on dim 1 (the latents themselves, or their directions)."""
        return z

    def _reseed_candidates(self, flat: torch.Tensor, error: torch.Tensor, count: int) -> torch.Tensor:
        """The ``count`` worst-coded vectors of this batch (rank 0's, under DDP), [count, C]."""
        picks = error.topk(min(count, _all_min(flat.shape[0], flat.device))).indices  # one shape on every rank
        chosen = flat[picks].detach().clone()
        return _from_rank0(chosen)


class _RateControlled:
    """What a quantizer needs to trade pairs for bits (qmp, and a residual VQ trained with ``train_lambdas``): the
    encoder's multiplier ``rate_lambda`` and, in training, one drawn an image, so one decoder learns every pair count."""

    SYMBOL_FLOOR = 0.5  # pseudo-count under every EMA symbol frequency: no symbol costs infinite bits
    FULL_RATE_SHARE = 0.25  # training images coded at lambda 0 when lambda is drawn

    rate_lambda: float
    train_lambdas: tuple[float, float] | None

    def _lambdas(self, images: int, positions: int, device: torch.device) -> torch.Tensor:
        """Per-position lambda in units of the latents' energy [M]: ``rate_lambda``, or in training one draw an image
        (log-uniform over ``train_lambdas``, ``FULL_RATE_SHARE`` of the images at 0)."""
        if not (self.training and self.train_lambdas is not None):
            return torch.full((images * positions,), float(self.rate_lambda), device=device)
        low, high = self.train_lambdas
        draw = torch.exp(math.log(low) + torch.rand(images) * math.log(high / low))
        draw = torch.where(torch.rand(images) < self.FULL_RATE_SHARE, torch.zeros_like(draw), draw)
        return draw.to(device).repeat_interleave(positions)

    @classmethod
    def symbol_bits(cls, freq: torch.Tensor) -> torch.Tensor:
        """Bits of each symbol from EMA frequencies (the last dim is the alphabet), floored."""
        floored = freq + cls.SYMBOL_FLOOR
        return -torch.log2(floored / floored.sum(-1, keepdim=True))

    @classmethod
    def count_bits(cls, count_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the EMA frequencies of a position's pair count 0..K: for each rank k, the bits of going on to a
        k+1-th pair and of stopping at k pairs [K] each."""
        counts = count_freq + cls.SYMBOL_FLOOR
        reached = counts.flip(0).cumsum(0).flip(0)  # reached[k]: positions with >= k pairs
        return -torch.log2(reached[1:] / reached[:-1]), -torch.log2(counts[:-1] / reached[:-1])

    @staticmethod
    def _ema_frequencies(freq: torch.Tensor, counts: torch.Tensor, rows: torch.Tensor, decay: float) -> None:
        """An EMA step of symbol frequencies [..., S] towards this batch's ``counts`` over ``rows`` positions, scaled
        so that a uniformly used alphabet stays at 1."""
        freq.mul_(decay).add_(counts.view_as(freq) / rows * freq.shape[-1], alpha=1 - decay)


def _check_train_lambdas(train_lambdas: tuple[float, float] | None) -> None:
    if train_lambdas is not None and not 0 < train_lambdas[0] <= train_lambdas[1]:
        raise ValueError(f"train_lambdas must be 0 < low <= high, got {train_lambdas}")


class VectorQuantizerEMA(_Quantizer):
    """Nearest-neighbour VQ with an EMA codebook [C, N] (VQ-VAE-2)."""

    def __init__(self, dim: int, num_atoms: int, decay: float = _DEFAULT.ema_decay, eps: float = 1e-5,
                 commitment: float = _DEFAULT.commitment, restart_dead: bool = _DEFAULT.restart_dead) -> None:
        super().__init__(dim, num_atoms, 1, 1, commitment, restart_dead)
        self.decay, self.eps = decay, eps
        embed = torch.randn(dim, num_atoms)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(num_atoms))
        self.register_buffer("embed_avg", embed.clone())

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = _flatten(z.float())
            if self.training and not bool(self.initialized):
                self.initialize(flat.detach())
            index = self.assign(flat.detach())
            quantized = F.embedding(index, self.entries())
            loss = self.commitment * F.mse_loss(flat, quantized.detach())
            z_q = _unflatten(straight_through(flat, quantized), z)
        b, _, h, w = z.shape
        codes = Codes(index.reshape(b, h, w, 1), torch.zeros(b, h, w, 1, dtype=torch.long, device=z.device))
        return QuantizerOutput(z_q, codes, loss, usage_stats(codes, self.num_atoms, 1))

    def assign(self, flat: torch.Tensor) -> torch.Tensor:
        """The nearest codebook entry of each vector [M, C]; in training, followed by the codebook's EMA
        step; the entries index the updated codebook."""
        index, error = self.nearest(flat)
        if self.training:
            self.learn(flat, index, error)
        return index

    def nearest(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest codebook entry of each vector [M, C] and its squared distance [M]."""
        # |x|^2 - 2 x.e + |e|^2, in place (-(2 x.e - |x|^2) is the same float): [M, N] temporaries of a
        # photograph's rows cost more than their arithmetic
        distance = (2 * flat @ self.embed).sub_(flat.square().sum(1, keepdim=True)).neg_()
        error, index = distance.add_(self.embed.square().sum(0, keepdim=True)).min(dim=1)
        return index, error

    def codebook(self) -> torch.Tensor:
        """The vectors the codes' atoms index, [C, N]."""
        return self.embed

    def entries(self) -> torch.Tensor:
        """The codebook as rows [N, C], contiguous: an entry gathered by index is one read of C floats (from the
        transposed view, C strided reads)."""
        return self.embed.t().contiguous()

    def decode_codes(self, codes: Codes) -> torch.Tensor:
        flat = F.embedding(codes.atoms[..., 0].reshape(-1), self.entries())
        b, h, w, _ = codes.atoms.shape
        return flat.reshape(b, h, w, self.dim).permute(0, 3, 1, 2)

    @torch.no_grad()
    def initialize(self, targets: torch.Tensor, iterations: int = 3) -> None:
        """Start the codebook as k-means centroids of encoder outputs [M, C] (rank 0's, under DDP)."""
        generator = torch.Generator(device=targets.device).manual_seed(0)
        centroids = kmeans(targets.float(), self.num_atoms, iterations=iterations, generator=generator)
        self.embed.copy_(_from_rank0(centroids.contiguous()))
        self.embed_avg.copy_(self.embed)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def learn(self, flat: torch.Tensor, index: torch.Tensor, error: torch.Tensor) -> None:
        """The codebook's EMA step towards the vectors [M, C] coded by entries ``index`` [M] (``error``: their
        squared distances, to pick the worst-coded as seeds of dead entries)."""
        onehot_sum = _all_sum(torch.bincount(index, minlength=self.num_atoms).to(flat.dtype))
        embed_sum = torch.zeros_like(self.embed).index_add_(1, index, flat.t())
        embed_sum = _all_sum(embed_sum)
        self.cluster_size.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(embed_sum, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_atoms * self.eps) * n  # Laplace smoothing
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(0))
        dead = self._track_usage(index)
        if self.restart_dead and bool(dead.any()):
            seeds = self._reseed_candidates(flat, error, int(dead.sum()))
            slots = dead.nonzero().squeeze(1)[: seeds.shape[0]]
            self.embed[:, slots] = seeds.t()
            self.embed_avg[:, slots] = seeds.t()
            self.cluster_size[slots] = 1.0
            self.usage[slots] = 1.0 / self.num_atoms


class ResidualVQ(_RateControlled, nn.Module):
    """K EMA codebooks [C, N]: stage k codes the residual of stages 1..k-1, z_q the sum of the K entries.

    A code is K pairs whose atoms index the stacked codebooks (stage k's entries are k*N .. k*N+N-1),
    so the canonical ascending order is the stage order, and every code map, store, prior and
    entropy coder handles it as K atoms out of K*N with one level.

    ``kept`` (per image, from ``VQVAE2``'s stage dropout) keeps only an image's first stages (SoundStream's
    quantizer dropout), so the decoder learns every prefix: a code cut to its first q stages is a coarser code
    of the same image, which is the codec's rate control.

    Trained with ``train_lambdas``, it stops per position instead, as the quantised pursuit does: a position takes
    stage k only while the stage's drop in squared error exceeds lambda x its bits (the entry's, and going on
    rather than stopping, from EMA frequencies), lambda in units of the latents' mean energy; training draws
    lambda per image, so one decoder learns every per-position stage count, and ``rate_lambda`` is the codec's
    quality knob. A stage's codebook learns only from the positions that took it.
    """

    def __init__(self, dim: int, num_atoms: int, stages: int, decay: float = _DEFAULT.ema_decay,
                 commitment: float = _DEFAULT.commitment, restart_dead: bool = _DEFAULT.restart_dead,
                 rate_lambda: float = _DEFAULT.rate_lambda, train_lambdas: tuple[float, float] | None = None) -> None:
        super().__init__()
        _check_train_lambdas(train_lambdas)
        if rate_lambda and train_lambdas is None:
            raise ValueError("a residual VQ stops early (rate_lambda > 0) only when trained to (train_lambdas)")
        self.dim, self.num_atoms, self.commitment, self.decay = dim, num_atoms, commitment, decay  # num_atoms: a stage's
        self.code_atoms, self.slots, self.coef_levels = num_atoms * stages, stages, 1
        self.rate_lambda, self.train_lambdas = rate_lambda, train_lambdas
        self.stages = nn.ModuleList(VectorQuantizerEMA(dim, num_atoms, decay=decay, commitment=0.0,
                                                       restart_dead=restart_dead) for _ in range(stages))
        self.register_buffer("initialized", torch.tensor(False))
        if self.rate_controlled:
            # EMA frequencies of each stage's entries and of the stage counts 0..K (the encoder's bit estimates), and
            # of the latents' ||z||^2 a position (lambda's unit)
            self.register_buffer("entry_freq", torch.ones(stages, num_atoms))
            self.register_buffer("count_freq", torch.ones(stages + 1))
            self.register_buffer("energy", torch.tensor(1.0))

    @property
    def rate_controlled(self) -> bool:
        """Whether positions stop early by lambda (trained over ``train_lambdas``)."""
        return self.train_lambdas is not None

    def forward(self, z: torch.Tensor, kept: torch.Tensor | None = None) -> QuantizerOutput:
        """``kept``: stages each image keeps [B] (0..K; default all K)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = _flatten(z.float())
            if self.training and not bool(self.initialized):
                self.initialize(flat.detach())
            b, _, h, w = z.shape
            kept = (torch.full((b * h * w,), self.slots, device=z.device) if kept is None
                    else kept.to(z.device).repeat_interleave(h * w))  # [M]: stages each vector keeps
            lam = self._lambdas(b, h * w, flat.device) * self.energy if self.rate_controlled else None
            if lam is not None:
                go, stop = self.count_bits(self.count_freq)
                count_bits = go - stop  # [K]: going on to stage k+1 rather than stopping at k
            residual = flat.detach()
            picks = []
            going = kept > 0  # [M]: the vectors still taking stages
            for k, stage in enumerate(self.stages):
                index, error = self._nearest(stage, residual)
                going = going & (kept > k)
                if lam is not None:
                    going = going & self._pays(index, residual.square().sum(1) - error, lam,
                                               self.symbol_bits(self.entry_freq[k]), count_bits[k])
                if stage.training:
                    stage.learn(residual[going], index[going], error[going])
                residual = residual - F.embedding(index, stage.entries()) * going.unsqueeze(1)
                picks.append(torch.where(going, index + k * self.num_atoms, EMPTY))
            atoms = torch.stack(picks, dim=1)
            if self.training and lam is not None:
                self._learn_rates(flat.detach(), atoms)
            quantized = compose((atoms != EMPTY).to(flat.dtype), atoms.clamp_min(0), self.codebook())
            # A vector that takes no stage is not sent: the decoder gets zero, and neither loss nor gradient
            # reaches its encoder output through it.
            sent = (atoms != EMPTY).any(dim=1).to(flat.dtype)
            error = (flat - quantized.detach()).square().mean(dim=1)
            loss = self.commitment * (error * sent).sum() / sent.sum().clamp_min(1)
            z_q = _unflatten(straight_through(flat, quantized) * sent.unsqueeze(1), z)
        codes = Codes(atoms.reshape(b, h, w, self.slots), torch.zeros(b, h, w, self.slots, dtype=torch.long,
                                                                      device=z.device))
        return QuantizerOutput(z_q, codes, loss, usage_stats(codes, self.code_atoms, 1))

    @staticmethod
    def _pays(index: torch.Tensor, gain: torch.Tensor, lam: torch.Tensor, entry_bits: torch.Tensor,
              count_bits: torch.Tensor) -> torch.Tensor:
        """Whether a stage's pick ``index`` [M] pays for its bits: its drop in squared error ``gain`` [M] exceeds
        lambda [M] x (the entry's bits, of the stage's [N], + going on - stopping); everything pays at lambda 0."""
        return (lam == 0) | (gain > lam * (entry_bits[index] + count_bits))

    @torch.no_grad()
    def _learn_rates(self, latent: torch.Tensor, atoms: torch.Tensor) -> None:
        """EMA steps of the entry and stage-count frequencies and of the latents' energy, from this batch's
        codes [M, K] of the latents [M, C]."""
        d, present = self.decay, atoms != EMPTY
        rows = _all_sum(torch.tensor(float(atoms.shape[0]), device=atoms.device)).clamp_min(1)
        self._ema_frequencies(self.entry_freq, _all_sum(torch.bincount(atoms[present], minlength=self.code_atoms)
                                                        .float()), rows, d)
        self._ema_frequencies(self.count_freq, _all_sum(torch.bincount(present.sum(1), minlength=self.slots + 1)
                                                        .float()), rows, d)
        self.energy.mul_(d).add_(_all_sum(latent.square().sum()) / rows, alpha=1 - d)

    @staticmethod
    def _nearest(stage: VectorQuantizerEMA, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``stage.nearest``; outside training in blocks of rows, so that each block's distances to the
        codebook stay in cache (a photograph's [17k x 1024] matrix at once made encoding 2x slower)."""
        if stage.training:
            return stage.nearest(residual)
        index, error = zip(*(stage.nearest(rows) for rows in residual.split(ASSIGN_ROWS)))
        return torch.cat(index), torch.cat(error)

    def codebook(self) -> torch.Tensor:
        """The stages' codebooks side by side, [C, K*N]: the table the code's atoms index."""
        return torch.cat([stage.embed for stage in self.stages], dim=1)

    def decode_codes(self, codes: Codes) -> torch.Tensor:
        b, h, w, k = codes.atoms.shape
        atoms = codes.atoms.reshape(b * h * w, k)  # k may be 0: a map cut away
        present = atoms != EMPTY
        flat = compose(present.to(self.stages[0].embed.dtype), atoms.clamp_min(0), self.codebook())
        return flat.reshape(b, h, w, self.dim).permute(0, 3, 1, 2)

    @torch.no_grad()
    def initialize(self, targets: torch.Tensor, iterations: int = 3) -> None:
        """k-means for each stage in turn, on the residuals the stages before it leave."""
        residual = targets.float()
        for stage in self.stages:
            stage.initialize(residual, iterations=iterations)
            stage.eval()
            residual = residual - F.embedding(stage.assign(residual), stage.entries())
            stage.train(self.training)
        if self.rate_controlled:
            self.energy.copy_(_from_rank0(targets.float().square().sum(1).mean()))
        self.initialized.fill_(True)

    def coding_target(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def after_step(self) -> None:
        """The stages update their codebooks in the forward pass."""


class SparseQuantizer(_Quantizer):
    """Sparse coding over a learned unit-norm dictionary [C, N], by OMP or the LASSO (see module docstring)."""

    def __init__(self, dim: int, num_atoms: int, method: str = "omp", n_nonzero: int = _DEFAULT.n_nonzero,
                 alpha: float = _DEFAULT.alpha, max_nonzero: int = _DEFAULT.max_nonzero,
                 lasso_solver: str = _DEFAULT.lasso_solver,
                 coef_levels: int = _DEFAULT.coef_levels, coef_quantizer: str = _DEFAULT.coef_quantizer,
                 normalize_latents: bool = _DEFAULT.normalize_latents,
                 encoder_gradient: str = _DEFAULT.encoder_gradient, commitment: float = _DEFAULT.commitment,
                 dictionary_loss_weight: float = _DEFAULT.dictionary_loss_weight,
                 coef_decay: float = _DEFAULT.ema_decay, restart_dead: bool = _DEFAULT.restart_dead) -> None:
        super().__init__(dim, num_atoms, n_nonzero if method == "omp" else max_nonzero, coef_levels, commitment,
                         restart_dead)
        if method not in ("omp", "lasso"):
            raise ValueError(f"method must be 'omp' or 'lasso', got {method!r}")
        if coef_quantizer not in COEF_QUANTIZERS:
            raise ValueError(f"coef_quantizer must be one of {', '.join(COEF_QUANTIZERS)}, got {coef_quantizer!r}")
        if encoder_gradient not in ENCODER_GRADIENTS:
            raise ValueError(f"encoder_gradient must be one of {', '.join(ENCODER_GRADIENTS)}, "
                             f"got {encoder_gradient!r}")
        self.method, self.n_nonzero, self.alpha, self.max_nonzero = method, n_nonzero, alpha, max_nonzero
        self.lasso_solver = lasso_solver
        self.normalize_latents, self.dictionary_loss_weight = normalize_latents, dictionary_loss_weight
        self.coef_quantizer, self.encoder_gradient, self.coef_decay = coef_quantizer, encoder_gradient, coef_decay
        self.dictionary = nn.Parameter(normalize_atoms(torch.randn(dim, num_atoms)))
        self.register_buffer("coef_range", torch.tensor(1.0))
        # The value of each level, ascending; learned: the EMA counts and sums that make it.
        self.register_buffer("level_table", uniform_levels(coef_levels, self.coef_range))
        self.register_buffer("level_count", torch.ones(coef_levels))
        self.register_buffer("level_sum", self.level_table.clone())
        self._pending_restart: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def _solver(self) -> dict:
        if self.method == "omp":
            return dict(n_nonzero=self.n_nonzero)
        return dict(alpha=self.alpha, max_nonzero=self.max_nonzero, solver=self.lasso_solver)  # capped

    def codebook(self) -> torch.Tensor:
        """The vectors the codes' atoms index, [C, N]: the dictionary with unit-norm columns, as every code is
        computed and decoded."""
        return normalize_atoms(self.dictionary)

    def quantize_coefficients(self, values: torch.Tensor) -> torch.Tensor:
        """The level of the nearest value to each coefficient."""
        table = self.level_table
        return torch.bucketize(values.contiguous(), (table[1:] + table[:-1]) / 2)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = _flatten(z.float())
            target = self.coding_target(flat)
            if self.training and not bool(self.initialized):
                self.initialize(target.detach())
            dictionary = self.codebook()
            straight = self.encoder_gradient == "straight_through"
            # The dictionary always gets the task-driven gradient; the encoder only when asked.
            atoms, values = sparse_pairs(target.detach() if straight else target, dictionary, self.method,
                                         **self._solver)
            if self.training:
                self._fit_levels(values.detach()[values.detach() != 0])
            levels = self.quantize_coefficients(values.detach())
            # Pairs whose coefficient or level value is zero add nothing to z_q: they are not coded.
            kept = (values.detach() != 0) & (self.level_table[levels] != 0)
            order = canonical_order(torch.where(kept, atoms, EMPTY))
            atoms, values, levels, kept = (t.gather(1, order) for t in (atoms, values, levels, kept))
            atoms, levels = torch.where(kept, atoms, EMPTY), levels * kept
            safe_atoms = atoms.clamp_min(0)
            quantized = straight_through(values, self.level_table[levels] * kept)
            z_q_flat = compose(quantized, safe_atoms, dictionary)

            loss = self.commitment * F.mse_loss(target, z_q_flat.detach())
            if self.dictionary_loss_weight:  # D c, composed from the code's non-zeros
                fitted = compose(values * kept, safe_atoms, dictionary)
                loss = loss + self.dictionary_loss_weight * F.mse_loss(fitted, target.detach())
            if self.training and self.restart_dead:
                self._plan_restart(target.detach(), z_q_flat.detach(), atoms)
            if straight:
                z_q_flat = z_q_flat + (target - target.detach())
            z_q = _unflatten(z_q_flat, z)
        b, _, h, w = z.shape
        codes = Codes(atoms.reshape(b, h, w, self.slots), levels.reshape(b, h, w, self.slots))
        return QuantizerOutput(z_q, codes, loss, usage_stats(codes, self.num_atoms, self.coef_levels))

    def decode_codes(self, codes: Codes) -> torch.Tensor:
        b, h, w, k = codes.atoms.shape
        atoms, levels = codes.atoms.reshape(b * h * w, k), codes.levels.reshape(b * h * w, k)
        present = atoms != EMPTY
        flat = compose(self.level_table[levels] * present, atoms.clamp_min(0), self.codebook())
        return flat.reshape(b, h, w, self.dim).permute(0, 3, 1, 2)

    @torch.no_grad()
    def after_step(self) -> None:
        """Re-seed the atoms found dead in the last forward pass, and put every atom back on the
        unit sphere. Not done in the forward pass: the graph still needs the old dictionary."""
        if self._pending_restart is not None:
            slots, seeds = self._pending_restart
            self.dictionary[:, slots] = seeds.t()
            self._pending_restart = None
        self.dictionary.copy_(normalize_atoms(self.dictionary))

    def coding_target(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1) if self.normalize_latents else z

    @torch.no_grad()
    def initialize(self, target: torch.Tensor, iterations: int = 3) -> None:
        """Start the dictionary as a MOD fit to coding targets [M, C] (rank 0's, under DDP), and the
        coefficient values from their codes: the range's percentile, or the codes' quantiles."""
        target = target.float()
        generator = torch.Generator(device=target.device).manual_seed(0)
        fitted = init_dictionary_from_data(target, self.num_atoms, self.slots, mod_iterations=iterations,
                                           generator=generator)
        self.dictionary.copy_(_from_rank0(fitted.contiguous()))
        _, pairs = sparse_pairs(target, self.codebook(), self.method, **self._solver)
        values = pairs[pairs != 0]
        start = self._percentile(values.abs()) if values.numel() else torch.ones_like(self.coef_range)
        self.coef_range.copy_(_from_rank0(start))  # every rank joins the broadcast
        table = uniform_levels(self.coef_levels, self.coef_range)
        if self.coef_quantizer == "learned" and values.numel():
            sample = values[:: max(1, values.numel() // 1_000_000)]
            middles = (torch.arange(self.coef_levels, device=sample.device) + 0.5) / self.coef_levels
            table = torch.quantile(sample, middles.to(sample.dtype))
        self.level_table.copy_(_from_rank0(table.contiguous()))
        self.level_sum.copy_(self.level_table)
        self.level_count.fill_(1.0)
        self.initialized.fill_(True)

    def _percentile(self, magnitudes: torch.Tensor) -> torch.Tensor:
        sample = magnitudes[:: max(1, magnitudes.numel() // 1_000_000)]  # torch.quantile's size limit
        return torch.quantile(sample, COEF_QUANTILE).clamp_min(1e-6)

    @torch.no_grad()
    def _fit_levels(self, values: torch.Tensor) -> None:
        """One EMA step of the level values from this batch's non-zero coefficients (every rank joins)."""
        if self.coef_quantizer == "uniform":
            seen = values.numel() > 0
            observed = self._percentile(values.abs()) if seen else torch.zeros_like(self.coef_range)
            total = _all_sum(torch.stack([observed, torch.ones_like(observed) * seen]))
            if total[1] > 0:
                self.coef_range.mul_(self.coef_decay).add_(total[0] / total[1], alpha=1 - self.coef_decay)
            self.level_table.copy_(uniform_levels(self.coef_levels, self.coef_range))
            return
        index = self.quantize_coefficients(values)
        counts = _all_sum(torch.bincount(index, minlength=self.coef_levels).to(self.level_count.dtype))
        sums = _all_sum(torch.zeros_like(self.level_sum).index_add_(0, index, values.to(self.level_sum.dtype)))
        self.level_count.mul_(self.coef_decay).add_(counts, alpha=1 - self.coef_decay)
        self.level_sum.mul_(self.coef_decay).add_(sums, alpha=1 - self.coef_decay)
        table, order = (self.level_sum / self.level_count.clamp_min(1e-12)).sort()  # stays ascending
        self.level_table.copy_(table)
        self.level_sum.copy_(self.level_sum[order])
        self.level_count.copy_(self.level_count[order])

    @torch.no_grad()
    def _plan_restart(self, target: torch.Tensor, z_q: torch.Tensor, atoms: torch.Tensor) -> None:
        dead = self._track_usage(atoms)
        if not bool(dead.any()):
            return
        error = (target - z_q).square().sum(dim=1)
        seeds = self._reseed_candidates(target, error, int(dead.sum()))
        slots = dead.nonzero().squeeze(1)[: seeds.shape[0]]
        self.usage[slots] = 1.0 / self.num_atoms
        self._pending_restart = (slots, seeds)


class QuantisedPursuit(_RateControlled, _Quantizer):
    """Quantised matching pursuit (``qmp``): a multistage gain-shape quantiser over a learned unit-norm dictionary
    (Goyal, Vetterli, Thao 1998), the sparse code quantised where it is chosen.

    At rank k it picks the (atom a, signed level v) pair that minimises ||r - v d_a||^2 on the residual r of the
    pairs already QUANTISED - it maximises 2 v c_a - v^2, c_a = d_a . r - subtracts it and moves on, as a residual
    VQ's stage k codes what stages 1..k-1 left. Each rank has its own table of ``magnitudes`` positive values with a
    sign (symmetric: a negative correlation is never rounded to a positive value), each the EMA mean of |c| over
    the picks that chose it (Lloyd-Max's centroid condition). The code is ranked (``config.ranked``), as a residual
    VQ's: the k-th pick of atom a is stored as id ``k * N + a`` with level symbol ``k * 2L + index`` in
    ``level_values()``, so the canonical ascending order is the rank order, and the entropy models code each rank's
    atoms and values from that rank's own tables (coded as a set of atoms instead, the ranks' order cost 0.08-0.54
    bits a pixel in the equal-rate study).

    A position stops when no pair lowers the error - or, with a rate-distortion multiplier lambda > 0, when no pair
    pays for its bits: a pair is chosen by ``gain - lambda * bits`` (bits from EMA frequencies of each rank's
    atoms and values and of the pair counts), lambda in units of the mean squared norm of the latents, so one value
    keeps its meaning. Training draws lambda per image (log-uniform over ``train_lambdas``, a
    quarter of the images at 0), so one decoder learns every pair count; ``rate_lambda`` is the encoder's choice
    outside training - the codec's quality knob.

    The pursuit codes the latent z at a held scale, ``coding_target``: z sqrt(reference / E), E its mean squared norm a
    position (the batch's in training, as a batch norm's statistics, an EMA outside) and reference E when the
    dictionary was fitted, so the decoder, the commitment and the magnitudes see one scale. Without it nothing holds
    the scale: the magnitudes follow the encoder wherever it drifts, and in the equal-rate study the top latents of
    K=3 and 4 grew a hundred- and ten-thousand-fold within 600 steps. A magnitude no pick reaches is reseeded from
    the current |c| (so a map whose coefficients all fell below its smallest magnitude codes again), as atoms fallen
    out of use are from the worst-coded latents.

    The dictionary learns from the reconstruction loss through the quantised code and from the dictionary loss
    ``||sum_k v_k d_{a_k} - sg(z)||^2`` on the quantised code (what the decoder is sent); the encoder by the
    straight-through estimator ``z + sg(z_q - z)``."""

    def __init__(self, dim: int, num_atoms: int, slots: int = _DEFAULT.n_nonzero,
                 values: int = _DEFAULT.coef_levels, commitment: float = _DEFAULT.commitment,
                 dictionary_loss_weight: float = _DEFAULT.dictionary_loss_weight, decay: float = _DEFAULT.ema_decay,
                 restart_dead: bool = _DEFAULT.restart_dead, rate_lambda: float = _DEFAULT.rate_lambda,
                 train_lambdas: tuple[float, float] | None = None) -> None:
        if values < 2 or values % 2:
            raise ValueError(f"values (a rank's signed levels) must be even and >= 2, got {values}")
        _check_train_lambdas(train_lambdas)
        super().__init__(dim, num_atoms, slots, slots * values, commitment, restart_dead)
        self.magnitudes, self.decay, self.dictionary_loss_weight = values // 2, decay, dictionary_loss_weight
        self.rate_lambda, self.train_lambdas = rate_lambda, train_lambdas
        self.dictionary = nn.Parameter(normalize_atoms(torch.randn(dim, num_atoms)))
        # Rank k's magnitudes, ascending and positive, and the EMA counts and |c| sums that make them.
        self.register_buffer("magnitude_table", torch.linspace(0.5, 2.0, self.magnitudes).repeat(slots, 1))
        self.register_buffer("magnitude_count", torch.ones(slots, self.magnitudes))
        self.register_buffer("magnitude_sum", self.magnitude_table.clone())
        # EMA symbol frequencies for the encoder's bit estimates: per rank its atoms and magnitudes, and how many
        # pairs a position holds (0..K: each rank's continue / stop symbol).
        self.register_buffer("atom_freq", torch.ones(slots, num_atoms))
        self.register_buffer("magnitude_freq", torch.ones(slots, self.magnitudes))
        self.register_buffer("count_freq", torch.ones(slots + 1))
        # EMA of the encoder's ||z||^2 a position, and its value when the dictionary was fitted: the energy the latents
        # are coded at, lambda's unit
        self.register_buffer("energy", torch.tensor(1.0))
        self.register_buffer("reference", torch.tensor(1.0))
        self._pending_restart: tuple[torch.Tensor, torch.Tensor] | None = None

    def codebook(self) -> torch.Tensor:
        """The unit-norm atoms [C, N] the codes index (the gains live in the levels)."""
        return normalize_atoms(self.dictionary)

    def level_values(self) -> torch.Tensor:
        """The value of each level symbol [K * 2L]: rank by rank, the negated magnitudes reversed, then them."""
        return torch.cat([-self.magnitude_table.flip(1), self.magnitude_table], dim=1).reshape(-1)

    def pair_bits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's cost estimates in bits: atom [K, N], magnitude with its sign bit [K, L], and for each rank
        k, going on to a k+1-th pair and stopping at k pairs [K] each."""
        return (self.symbol_bits(self.atom_freq), 1 + self.symbol_bits(self.magnitude_freq),
                *self.count_bits(self.count_freq))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = _flatten(z.float())
            if self.training and not bool(self.initialized):
                self.initialize(flat.detach())
            target = self.coding_target(flat)
            dictionary = self.codebook()
            b, _, h, w = z.shape
            lam = self._lambdas(b, h * w, flat.device) * self.reference
            atoms, levels, picked = self.pursue(target.detach(), dictionary.detach(), lam)
            # the values the pursuit chose, read before _learn moves and re-sorts the tables
            z_q_flat = compose(self._values(atoms, levels), atoms.clamp_min(0), dictionary)  # gradient into D
            if self.training:
                self._learn(flat.detach(), target.detach(), atoms, levels, picked, z_q_flat.detach())
            loss = self.commitment * F.mse_loss(target, z_q_flat.detach())
            if self.dictionary_loss_weight:  # on the quantised code
                loss = loss + self.dictionary_loss_weight * F.mse_loss(z_q_flat, target.detach())
            z_q = _unflatten(z_q_flat + (target - target.detach()), z)  # straight through to the encoder
        shape = (b, h, w, self.slots)
        stats = usage_stats(Codes(atoms.reshape(shape), levels.reshape(shape)), self.num_atoms, self.coef_levels)
        ranked = torch.where(atoms != EMPTY, atoms + torch.arange(self.slots, device=atoms.device) * self.num_atoms,
                             EMPTY)  # pursue gives the picks in rank order, a position's empty slots last
        return QuantizerOutput(z_q, Codes(ranked.reshape(shape), levels.reshape(shape)), loss, stats)

    @property
    def code_atoms(self) -> int:
        """The ids a code may hold: each rank's own N (rank k's k*N .. k*N+N-1)."""
        return self.slots * self.num_atoms

    def coding_target(self, z: torch.Tensor) -> torch.Tensor:
        """The latents (channels on dim 1) at the energy the dictionary was fitted at: z sqrt(reference / E), E the
        batch's mean ||z||^2 a position in training (the gradient passes through it, as through a batch norm, so
        growing the latent is no direction of descent) and its EMA outside training."""
        energy = z.square().sum(1).mean() if self.training and bool(self.initialized) else self.energy
        return z * (self.reference / energy).sqrt()

    def _values(self, atoms: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """The level values of codes [M, K], zero in empty slots."""
        return self.level_values()[levels] * (atoms != EMPTY)

    @torch.no_grad()
    def pursue(self, target: torch.Tensor, dictionary: torch.Tensor, lam: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Code rows [M, C] greedily, rank by rank: one [M, N] correlation, the best level of each atom, the best
        atom. Returns atoms [M, K] in rank order (EMPTY after a position stops), level symbols [M, K] and the |c|
        of each rank's best pair [M, K] where the position reached that rank, coded or not (the magnitudes are
        centroids of the coded ones, and reseeded from them all)."""
        m, n, magnitudes = target.shape[0], self.num_atoms, self.magnitudes
        atoms = torch.full((m, self.slots), EMPTY, dtype=torch.long, device=target.device)
        levels = torch.zeros((m, self.slots), dtype=torch.long, device=target.device)
        picked = torch.zeros((m, self.slots), device=target.device)
        residual = target.clone()
        active = torch.ones(m, dtype=torch.bool, device=target.device)
        taken = torch.zeros((m, n), dtype=torch.bool, device=target.device)
        rows = torch.arange(m, device=target.device)
        rate = bool((lam > 0).any())
        if rate:
            atom_bits, magnitude_bits, go_bits, stop_bits = self.pair_bits()
        for k in range(self.slots):
            correlation = residual @ dictionary  # [M, N]
            size = correlation.abs()
            table = self.magnitude_table[k]
            if rate:  # each magnitude's bits differ, so the nearest one need not win
                score = torch.full_like(size, -float("inf"))
                choice = torch.zeros(size.shape, dtype=torch.long, device=size.device)
                for index in range(magnitudes):
                    value = size * (2 * table[index]) - table[index] ** 2 - lam[:, None] * magnitude_bits[k, index]
                    better = value > score
                    score, choice = torch.where(better, value, score), torch.where(better, index, choice)
                score = score - lam[:, None] * atom_bits[k]
                threshold = lam * (go_bits[k] - stop_bits[k])
            else:  # 2 v |c| - v^2 peaks at the magnitude nearest |c|
                choice = torch.bucketize(size, (table[1:] + table[:-1]) / 2)
                value = table[choice]
                score = size * (2 * value) - value.square()
                threshold = torch.zeros(m, device=target.device)
            gain, atom = score.masked_fill_(taken, -float("inf")).max(dim=1)
            add = active & (gain > threshold)
            magnitude, c = choice[rows, atom], correlation[rows, atom]
            negative = c < 0
            signed = torch.where(negative, magnitudes - 1 - magnitude, magnitudes + magnitude)
            residual -= (torch.where(negative, -table[magnitude], table[magnitude]) * add)[:, None] * dictionary.T[atom]
            atoms[:, k] = torch.where(add, atom, EMPTY)
            levels[:, k] = torch.where(add, k * 2 * magnitudes + signed, 0)
            picked[:, k] = c.abs() * active
            taken[rows, atom] |= add
            active = add
        return atoms, levels, picked

    @torch.no_grad()
    def _learn(self, latent: torch.Tensor, target: torch.Tensor, atoms: torch.Tensor, levels: torch.Tensor,
               picked: torch.Tensor, coded: torch.Tensor) -> None:
        """EMA steps of the magnitudes (centroids of the |c| that chose them), of the symbol frequencies and of the
        latents' energy (``latent`` [M, C]), from codes in rank order of the coding targets [M, C] (``coded``: what
        they decode to); stale magnitudes reseeded, the restart of atoms fallen out of use planned (every rank joins
        the all-reduces)."""
        d, magnitudes, slots = self.decay, self.magnitudes, self.slots
        present = atoms != EMPTY
        signed = levels % (2 * magnitudes)
        magnitude = torch.where(signed >= magnitudes, signed - magnitudes, magnitudes - 1 - signed)
        rank = torch.arange(slots, device=atoms.device).expand_as(atoms)
        cells = (rank * magnitudes + magnitude)[present]
        counts = _all_sum(torch.bincount(cells, minlength=slots * magnitudes).float()).view(slots, -1)
        sums = _all_sum(torch.zeros(slots * magnitudes, device=atoms.device).index_add_(0, cells, picked[present]))
        rows = _all_sum(torch.tensor(float(atoms.shape[0]), device=atoms.device)).clamp_min(1)
        self.magnitude_count.mul_(d).add_(counts, alpha=1 - d)
        self.magnitude_sum.mul_(d).add_(sums.view(slots, -1), alpha=1 - d)
        self._ema_frequencies(self.magnitude_freq, counts, rows, d)
        atom_counts = _all_sum(torch.bincount((rank * self.num_atoms + atoms.clamp_min(0))[present],
                                              minlength=slots * self.num_atoms).float())
        self._ema_frequencies(self.atom_freq, atom_counts, rows, d)
        self._ema_frequencies(self.count_freq, _all_sum(torch.bincount(present.sum(1), minlength=slots + 1).float()),
                              rows, d)
        self.energy.mul_(d).add_(_all_sum(latent.square().sum()) / rows, alpha=1 - d)
        self._reseed_magnitudes(picked, present)
        table, order = (self.magnitude_sum / self.magnitude_count.clamp_min(1e-12)).clamp_min(1e-6).sort(dim=1)
        self.magnitude_table.copy_(table)
        for name in ("magnitude_sum", "magnitude_count", "magnitude_freq"):  # the symbols follow their values
            buffer = getattr(self, name)
            buffer.copy_(buffer.gather(1, order))
        dead = self._track_usage(atoms)
        if self.restart_dead and bool(dead.any()):
            # a re-seeded atom points at one of the worst-coded vectors (their residuals' directions left a helper's
            # top map with 16 live atoms of 256, the vectors' own with 176)
            seeds = self._reseed_candidates(target, (target - coded).square().sum(1), int(dead.sum()))
            slots_ = dead.nonzero().squeeze(1)[: seeds.shape[0]]
            self.usage[slots_] = 1.0 / self.num_atoms
            self._pending_restart = (slots_, seeds)

    @torch.no_grad()
    def _reseed_magnitudes(self, picked: torch.Tensor, present: torch.Tensor) -> None:
        """Reseed each stale magnitude - picked under 1/16 as often as its share of the positions reaching its rank
        - at its quantile of this batch's |c| of the rank's best pairs (rank 0's), as a dead atom is restarted. An
        unpicked cell's EMA sum and count decay together, so its value would stay where no coefficient is; once
        every |c| fell below half a rank's smallest magnitude, its map would never code again."""
        reached = self.count_freq.flip(0).cumsum(0).flip(0)[:-1] / (self.slots + 1)  # share with >= k pairs [K]
        floor = (DEAD_BELOW * reached)[:, None].expand_as(self.magnitude_freq)
        stale = self.magnitude_freq < floor
        if not bool(stale.any()):
            return
        middles = (torch.arange(self.magnitudes, device=picked.device) + 0.5) / self.magnitudes
        reaches = torch.cat([torch.ones_like(present[:, :1]), present[:, :-1]], dim=1)  # positions at each rank
        fresh = self.magnitude_sum / self.magnitude_count.clamp_min(1e-12)
        for k in stale.any(1).nonzero().flatten().tolist():
            sample = picked[reaches[:, k], k]
            if sample.numel():
                fresh[k] = torch.quantile(sample[:: max(1, sample.numel() // 1_000_000)], middles.to(sample.dtype))
        fresh = _from_rank0(fresh.clamp_min(1e-6).contiguous())
        self.magnitude_count[stale] = 1.0  # one pick's weight, as a fresh table's: its first picks move it
        self.magnitude_sum[stale] = fresh[stale]
        self.magnitude_freq[stale] = floor[stale]  # stale again after a step without picks: reseeded again

    @torch.no_grad()
    def after_step(self) -> None:
        """Re-seed the atoms found dead in the last forward pass and put every atom back on the unit sphere (not in
        the forward pass: the graph still needs the old dictionary)."""
        if self._pending_restart is not None:
            slots, seeds = self._pending_restart
            self.dictionary[:, slots] = seeds.t()
            self._pending_restart = None
        self.dictionary.copy_(normalize_atoms(self.dictionary))

    @torch.no_grad()
    def initialize(self, target: torch.Tensor, iterations: int = 3) -> None:
        """Start from data: the dictionary a MOD fit to the targets [M, C] (rank 0's, under DDP); rank k's
        magnitudes the quantiles of |c| of matching pursuit's k-th picks, each rank quantised with its new table
        before the next is fitted."""
        target = target.float()
        generator = torch.Generator(device=target.device).manual_seed(0)
        fitted = init_dictionary_from_data(target, self.num_atoms, self.slots, mod_iterations=iterations,
                                           generator=generator)
        self.dictionary.copy_(_from_rank0(fitted.contiguous()))
        dictionary = self.codebook()
        residual = target[:: max(1, target.shape[0] // 100_000)].clone()
        middles = (torch.arange(self.magnitudes, device=target.device, dtype=target.dtype) + 0.5) / self.magnitudes
        taken = torch.zeros((residual.shape[0], self.num_atoms), dtype=torch.bool, device=target.device)
        rows = torch.arange(residual.shape[0], device=target.device)
        for k in range(self.slots):
            correlation = residual @ dictionary
            best, atom = correlation.abs().masked_fill(taken, -1.0).max(dim=1)
            table = _from_rank0(torch.quantile(best, middles).clamp_min(1e-6).contiguous())
            self.magnitude_table[k] = table
            value = table[torch.bucketize(best, (table[1:] + table[:-1]) / 2)]
            residual -= (value * correlation[rows, atom].sign())[:, None] * dictionary.T[atom]
            taken[rows, atom] = True
        self.magnitude_sum.copy_(self.magnitude_table)
        self.magnitude_count.fill_(1.0)
        self.energy.copy_(_from_rank0(target.square().sum(1).mean()))
        self.reference.copy_(self.energy)
        self.initialized.fill_(True)

    def decode_codes(self, codes: Codes) -> torch.Tensor:
        b, h, w, k = codes.atoms.shape
        atoms, levels = codes.atoms.reshape(b * h * w, k), codes.levels.reshape(b * h * w, k)
        flat = compose(self._values(atoms, levels), atoms.clamp_min(0) % self.num_atoms, self.codebook())
        return flat.reshape(b, h, w, self.dim).permute(0, 3, 1, 2)


class FiniteScalarQuantizer(nn.Module):
    """FSQ (Mentzer, Minnen, Agustsson, Tschannen 2023): the latent is projected to a few dimensions, each
    bounded and rounded to a fixed grid of L_i values, and projected back. The implicit codebook is the grid's
    prod L_i points, none learned, none dead: the anchor many would pick instead of any codebook. A code is one
    pair a position, its atom the grid point's index (mixed radix)."""

    def __init__(self, dim: int, num_atoms: int) -> None:
        """``num_atoms``: the nominal codebook size that picks the grid (``config.FSQ_LEVELS``)."""
        super().__init__()
        if num_atoms not in FSQ_LEVELS:
            raise ValueError(f"fsq codes num_atoms = {', '.join(map(str, FSQ_LEVELS))}; got {num_atoms}")
        levels = torch.tensor(FSQ_LEVELS[num_atoms])
        # The grid holds about the nominal size: 240, 1000, 4375, 15360 points.
        self.dim, self.num_atoms, self.slots, self.coef_levels = dim, int(levels.prod()), 1, 1
        self.register_buffer("levels", levels)
        self.register_buffer("radix", torch.cumprod(torch.cat([torch.ones(1, dtype=levels.dtype), levels[:-1]]), 0))
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def code_atoms(self) -> int:
        return self.num_atoms

    def _grid(self, h: torch.Tensor) -> torch.Tensor:
        """Each dimension bounded to L_i values and rounded (straight through), in integer units centred on 0:
        -L/2 .. L/2 - 1 for even L (the tanh is shifted so that both ends are reached), -(L-1)/2 .. (L-1)/2 for odd."""
        levels = self.levels.to(h.dtype)
        half = (levels - 1) * (1 - 1e-3) / 2
        offset = (1 - levels % 2) * 0.5
        bounded = torch.tanh(h + torch.atanh(offset / half)) * half - offset
        return straight_through(bounded, bounded.round())

    def _latent(self, grid: torch.Tensor) -> torch.Tensor:
        return self.project_out(grid / (self.levels // 2).to(grid.dtype))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = _flatten(z.float())
            if self.training and not bool(self.initialized):
                self.initialize(flat.detach())
            grid = self._grid(self.project_in(flat))
            z_q = _unflatten(self._latent(grid), z)
            index = ((grid.detach().round().long() + self.levels // 2) * self.radix).sum(1)
        b, _, h, w = z.shape
        codes = Codes(index.reshape(b, h, w, 1), torch.zeros(b, h, w, 1, dtype=torch.long, device=z.device))
        return QuantizerOutput(z_q, codes, z.new_zeros(()), usage_stats(codes, self.num_atoms, 1))

    def decode_codes(self, codes: Codes) -> torch.Tensor:
        b, h, w, _ = codes.atoms.shape
        digits = codes.atoms.reshape(-1, 1) // self.radix % self.levels
        flat = self._latent((digits - self.levels // 2).to(self.project_out.weight.dtype))
        return flat.reshape(b, h, w, self.dim).permute(0, 3, 1, 2)

    def codebook(self) -> torch.Tensor:
        """Every grid point's latent, [C, N] (pictures of the codebook)."""
        with torch.no_grad():
            atoms = torch.arange(self.num_atoms, device=self.levels.device).reshape(1, 1, -1, 1)
            return self.decode_codes(Codes(atoms, torch.zeros_like(atoms)))[0, :, 0]

    def coding_target(self, z: torch.Tensor) -> torch.Tensor:
        return z

    @torch.no_grad()
    def initialize(self, targets: torch.Tensor, iterations: int = 0) -> None:
        """Start the projections from the latents' principal directions (rank 0's, under DDP): project_in maps
        two standard deviations of each onto the grid's range, project_out maps the grid back - as k-means
        starts a codebook, so the decoder gets the latents it was pretrained on, coarsely rounded."""
        targets = targets.float()
        mean = targets.mean(0)
        _, spread, directions = torch.linalg.svd(targets - mean, full_matrices=False)
        k = len(self.levels)
        scale = (2 * spread[:k] / max(targets.shape[0] - 1, 1) ** 0.5).clamp_min(1e-6)  # two standard deviations
        self.project_in.weight.copy_(_from_rank0((directions[:k] / scale[:, None]).contiguous()))
        self.project_in.bias.copy_(_from_rank0((-(directions[:k] @ mean) / scale).contiguous()))
        # tanh(h) ~ h near 0: a grid value g / (L // 2) stands for about h, i.e. h * scale along its direction
        self.project_out.weight.copy_(_from_rank0((directions[:k].t() * scale).contiguous()))
        self.project_out.bias.copy_(_from_rank0(mean.contiguous()))
        self.initialized.fill_(True)

    def after_step(self) -> None:
        """Nothing to do: the projections are ordinary parameters."""


def uniform_levels(count: int, coef_range: torch.Tensor) -> torch.Tensor:
    """``count`` evenly spaced values from -m to m: zero is a level when ``count`` is odd, and 2 levels
    are the signs (gain-shape coding at K=1)."""
    odd = torch.arange(count, device=coef_range.device, dtype=coef_range.dtype) * 2 - (count - 1)  # exact zero
    return odd * (coef_range / (count - 1))


def compose(values: torch.Tensor, atoms: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """sum_k values[:, k] * dictionary[:, atoms[:, k]] -> [M, C], in the codes' slot order (bit-stable). The
    atoms are gathered as rows of a contiguous [N, C] copy (embedding: a fast backward; from the transposed view
    each row was C strided reads, 9 ms for a photograph's 61k pairs)."""
    return (values.unsqueeze(-1) * F.embedding(atoms, dictionary.t().contiguous())).sum(dim=1)


def build_quantizer(config: ModelConfig) -> nn.Module:
    if config.selection_fn == "vanilla":
        return VectorQuantizerEMA(config.embed_dim, config.num_atoms, decay=config.ema_decay,
                                  commitment=config.commitment, restart_dead=config.restart_dead)
    lambdas = (config.train_lambda_min, config.train_lambda_max) if config.train_lambda_max else None
    if config.selection_fn == "qmp":
        return QuantisedPursuit(config.embed_dim, config.num_atoms, config.n_nonzero, config.coef_levels,
                                commitment=config.commitment, dictionary_loss_weight=config.dictionary_loss_weight,
                                decay=config.ema_decay, restart_dead=config.restart_dead,
                                rate_lambda=config.rate_lambda, train_lambdas=lambdas)
    if config.selection_fn == "fsq":
        return FiniteScalarQuantizer(config.embed_dim, config.num_atoms)
    if config.selection_fn == "rvq":
        return ResidualVQ(config.embed_dim, config.num_atoms, config.stages, decay=config.ema_decay,
                          commitment=config.commitment, restart_dead=config.restart_dead,
                          rate_lambda=config.rate_lambda, train_lambdas=lambdas)
    return SparseQuantizer(
        config.embed_dim, config.num_atoms, method=config.selection_fn, n_nonzero=config.n_nonzero,
        alpha=config.alpha, max_nonzero=config.max_nonzero, lasso_solver=config.lasso_solver,
        coef_levels=config.coef_levels,
        coef_quantizer=config.coef_quantizer, normalize_latents=config.normalize_latents,
        encoder_gradient=config.encoder_gradient, commitment=config.commitment,
        dictionary_loss_weight=config.dictionary_loss_weight, coef_decay=config.ema_decay,
        restart_dead=config.restart_dead,
    )
