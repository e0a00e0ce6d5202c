import copy

import pytest
import torch

from sparse_vqvae.codes import EMPTY, Codes, validate_codes
from sparse_vqvae.generation import CompiledBackbone, CompiledHead, IncrementalBackbone, TorchHead, emit, generate, sample
from sparse_vqvae.pixelsnail import CausalAttention, PixelSNAIL, PriorConfig, bits
from sparse_vqvae.code_store import MapsInMemory
from sparse_vqvae.prior_train import (PriorLoss, bits_per_image, load_prior, run_prior_training, save_prior, step_rows,
                                      train_prior)

VARIANTS = {
    "vanilla": dict(num_atoms=16, coef_levels=1, slots=1, variable_count=False),
    "omp": dict(num_atoms=16, coef_levels=8, slots=2, variable_count=False),
    "lasso": dict(num_atoms=16, coef_levels=8, slots=3, variable_count=True),
    "rvq": dict(num_atoms=16, coef_levels=1, slots=2, variable_count=False, stage_atoms=8),
    "qmp": dict(num_atoms=16, coef_levels=8, slots=2, variable_count=True, stage_atoms=8),  # ranked, 0..K pairs
}


def prior_for(name, conditioned=False, **overrides):
    args = dict(VARIANTS[name], height=4, width=4, channels=16, blocks=1, res_per_block=1, heads=2, dropout=0.0)
    if conditioned:
        args.update(height=4, width=4, condition=dict(VARIANTS[name], height=2, width=2))
        args["condition"].pop("variable_count")
    args.update(overrides)
    torch.manual_seed(0)
    return PixelSNAIL(PriorConfig(**args))


def random_codes(name, batch=6, height=4, width=4, seed=0):
    """Valid codes: ascending distinct atoms, K of them (OMP, vanilla; a residual VQ's one per stage) or
    0..K (the LASSO)."""
    v = VARIANTS[name]
    g = torch.Generator().manual_seed(seed)
    if v.get("stage_atoms"):
        m = v["stage_atoms"]
        atoms = torch.randint(m, (batch, height, width, v["slots"]), generator=g) + m * torch.arange(v["slots"])
    else:
        order = torch.rand(batch, height, width, v["num_atoms"], generator=g).argsort(-1)[..., : v["slots"]]
        atoms = order.sort(-1).values
    if v["variable_count"]:
        count = torch.randint(0, v["slots"] + 1, (batch, height, width, 1), generator=g)
        atoms = torch.where(torch.arange(v["slots"]) < count, atoms, EMPTY)
    levels = torch.randint(v["coef_levels"], atoms.shape, generator=g) * (atoms != EMPTY)
    return Codes(atoms, levels)


@pytest.mark.parametrize("name", VARIANTS)
def test_backbone_is_causal(name):
    prior = prior_for(name).eval()
    codes = random_codes(name, batch=1)
    embedded = prior.embed(codes).detach().requires_grad_()
    h = prior.conv_in(embedded) + prior.position
    for blocks, attention in zip(prior.blocks, prior.attention):
        for block in blocks:
            h = block(h)
        h = attention(h)
    flat = h.reshape(h.shape[1], -1)
    for i in [0, 5, 15]:
        (grad,) = torch.autograd.grad(flat[:, i].sum(), embedded, retain_graph=True)
        later = grad.reshape(grad.shape[1], -1)[:, i:]
        assert torch.equal(later, torch.zeros_like(later)), f"position {i} sees positions >= {i}"


@pytest.mark.parametrize("rows", [0, 1])
@pytest.mark.parametrize("form", [IncrementalBackbone, CompiledBackbone])
@pytest.mark.parametrize("positions", ["learned", "none"])
@pytest.mark.parametrize("conditioned", [False, True])
@pytest.mark.parametrize("name", VARIANTS)
def test_incremental_backbone_gives_the_full_pass_features(name, conditioned, positions, form, rows):
    """Position by position from the cached layer inputs, as generation and prior coding run it, in PyTorch
    and in C: the features of the full pass, with two blocks, two residual blocks each and non-square maps
    (without positions: maps of another size than the prior's), attending to every earlier position or to a
    window of rows."""
    height, width = (5, 6) if positions == "learned" else (7, 3)
    prior = prior_for(name, conditioned, height=5, width=6, blocks=2, res_per_block=2,
                      positions=positions, attention_rows=rows).double().eval()
    with torch.no_grad():
        if prior.position is not None:
            prior.position.normal_()  # trained priors' positions are not zero: make the test see them
        codes = random_codes(name, batch=3, height=height, width=width, seed=4)
        features = prior.condition_features(random_codes(name, batch=3, height=2, width=2, seed=5),
                                            (height, width)) if conditioned else None
        full = prior.backbone(codes, features)
        incremental = form(prior, 3, features, (height, width))
        for y in range(height):
            for x in range(width):
                torch.testing.assert_close(incremental.features_at(y, x), full[:, :, y, x], rtol=0, atol=1e-12)
                incremental.write_codes(y, x, codes.atoms[:, y, x], codes.levels[:, y, x])


@pytest.mark.parametrize("rows", [1, 2])
def test_windowed_attention_sees_its_own_row_and_the_rows_above_only(rows):
    """With ``attention_rows`` the output at (y, x) depends on the inputs at (y, 0 .. x) and on rows y - rows .. y - 1
    whole, and on nothing else (VQ-VAE-2's attention sees every earlier position)."""
    height, width = 5, 4
    torch.manual_seed(0)
    attention = CausalAttention(8, 2, rows)
    x = torch.randn(1, 8, height, width, requires_grad=True)
    flat = attention(x).reshape(8, -1)
    for i in range(height * width):
        (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        seen = grad.abs().sum(1).flatten() != 0
        j = torch.arange(height * width)
        expected = (j <= i) & (j // width >= i // width - rows)
        assert torch.equal(seen, expected), f"position {i}"


def test_compiled_backbone_follows_changes_to_the_prior():
    """The compiled form keeps each prior's weights in its own layout: a training step (an in-place update)
    or a dtype change must reach the next pass, not the layout made before it."""
    prior = prior_for("omp", False, height=4, width=4).double().eval()
    codes = random_codes("omp", batch=2, height=4, width=4, seed=6)

    def features_match_the_full_pass() -> None:
        full = prior.backbone(codes, None)
        backbone = CompiledBackbone(prior, 2, None, (4, 4))
        for y in range(4):
            for x in range(4):
                torch.testing.assert_close(backbone.features_at(y, x), full[:, :, y, x], rtol=1e-5, atol=1e-5)
                backbone.write_codes(y, x, codes.atoms[:, y, x], codes.levels[:, y, x])

    with torch.no_grad():
        features_match_the_full_pass()
        for parameter in prior.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        features_match_the_full_pass()
        prior.float()
        features_match_the_full_pass()


def test_compiled_attention_over_two_threads_gives_one_threads_bits():
    """From position 1024 on the compiled backbone splits attention's heads over a second thread (``threads``): each
    head computed whole by one thread, so every feature the same bits as with one thread."""
    from sparse_vqvae._native import incremental

    if incremental is None:
        pytest.skip("the C extension is not built")
    height, width = 40, 30  # 1,200 positions: the last 176 split
    prior = prior_for("rvq", height=height, width=width, channels=8).double().eval()
    codes = random_codes("rvq", batch=2, height=height, width=width, seed=11)
    features = []
    with torch.inference_mode():
        for threads in (1, 2):
            backbone = CompiledBackbone(prior, 2, None, (height, width))
            incremental.threads(backbone._plan, threads)
            rows = []
            for y in range(height):
                for x in range(width):
                    rows.append(backbone.features_at(y, x))
                    backbone.write_codes(y, x, codes.atoms[:, y, x], codes.levels[:, y, x])
            features.append(torch.stack(rows))
    assert torch.equal(features[0], features[1])


def test_a_prior_made_under_inference_mode_generates():
    """Parameters made inside ``torch.inference_mode`` (a codec built there) carry no version counter: the
    compiled forms lay their weights out afresh instead of caching them under one."""
    prior = prior_for("lasso", conditioned=True)
    with torch.inference_mode():
        made_there = copy.deepcopy(prior).double().eval()  # as PriorEntropyModel makes its coding copies
        maps = sample(made_there, 2, condition=random_codes("lasso", batch=2, height=2, width=2, seed=9),
                      generator=torch.Generator().manual_seed(0))
    assert maps.atoms.shape == (2, 4, 4, VARIANTS["lasso"]["slots"])


def test_compiled_backbone_refuses_pairs_and_positions_outside_the_prior():
    """The C pass indexes its tables and buffers by what it is given: a pair outside the prior's atoms or
    levels, or a position outside the map, is refused with what is wrong instead of read out of bounds."""
    prior = prior_for("omp", False, height=4, width=4).double().eval()
    slots = prior.config.slots
    backbone = CompiledBackbone(prior, 1, None, (4, 4))
    with torch.no_grad():
        with pytest.raises(ValueError, match=f"outside the prior's {prior.config.num_atoms} atoms"):
            backbone.write_codes(0, 0, torch.full((1, slots), prior.config.num_atoms), torch.zeros(1, slots, dtype=torch.long))
        with pytest.raises(ValueError, match="levels"):
            backbone.write_codes(0, 0, torch.zeros(1, slots, dtype=torch.long), torch.full((1, slots), -1))
        with pytest.raises(IndexError, match="outside the 4x4 map"):
            backbone.features_at(4, 0)


def recording_pick(record: list):
    """A pick that draws by the Gumbel-max trick with noise fixed by where it is called, recording the logits:
    two heads with equal logits pick alike, and their picks cover atoms, levels and END."""
    def pick(logits, where, open_):
        g = torch.Generator().manual_seed(1000 * where[0] + 100 * where[1] + 10 * where[2] + logits.shape[-1])
        record.append((where, logits.clone()))
        return (logits + -torch.log(-torch.log(torch.rand(logits.shape, generator=g, dtype=torch.float64)))).argmax(-1)
    return pick


@pytest.mark.parametrize("tabled", [False, True])
@pytest.mark.parametrize("name", VARIANTS)
def test_compiled_head_emits_as_the_pytorch_head(name, tabled):
    """The CPU's head steps (C per slot) against PyTorch's, its advances per slot or from the table, through the one
    slot loop: the same logits to rounding at every pick, masks included, and the same pairs."""
    prior = prior_for(name).double().eval()
    h = torch.randn(7, prior.config.channels, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours, theirs = [], []
    with torch.no_grad():
        advances = prior.head.advances() if tabled else None
        expected = emit(TorchHead(prior.head, advances), prior.head, h, recording_pick(theirs), recording_pick(theirs),
                        (1, 2))
        found = emit(CompiledHead(prior), prior.head, h, recording_pick(ours), recording_pick(ours), (1, 2))
    assert [where for where, _ in ours] == [where for where, _ in theirs]
    for (_, a), (_, b) in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.equal(found[0], expected[0]) and torch.equal(found[1], expected[1])
    assert (found[0] == EMPTY).any() == VARIANTS[name]["variable_count"]  # the LASSO's rows close with END


@pytest.mark.parametrize("name", VARIANTS)
def test_compiled_generation_gives_an_image_the_same_logits_in_a_batch_as_alone(name):
    """Prior coding codes images in batches and a file must hold the bytes it has alone: the compiled forms
    compute each row on its own, so every logit an image's symbols are drawn from is the same bits in a batch
    of three as alone (each image picking by its own noise)."""
    prior = prior_for(name, conditioned=True).double().eval()
    condition = random_codes(name, batch=3, height=2, width=2, seed=8)

    def logits_seen(images: list[int]) -> dict[int, list]:
        seen: dict[int, list] = {image: [] for image in images}

        def pick(logits, where, open_):
            choices = []
            for row, image in enumerate(images):
                seen[image].append((where, logits[row].clone()))
                g = torch.Generator().manual_seed(hash((image, where)) % 2**31)
                noise = -torch.log(-torch.log(torch.rand(logits.shape[-1], generator=g, dtype=torch.float64)))
                choices.append(int((logits[row] + noise).argmax()))
            return torch.tensor(choices)

        generate(prior, len(images), pick, pick, condition=condition[images])
        return seen

    together = logits_seen([0, 1, 2])
    for image in range(3):
        alone = logits_seen([image])[image]
        assert [where for where, _ in alone] == [where for where, _ in together[image]]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(alone, together[image])), f"image {image}"


@pytest.mark.parametrize("name", VARIANTS)
def test_generation_advances_the_head_as_teacher_forcing_does(name):
    head = prior_for(name).double().eval().head
    state = torch.randn(6, head.update[0].in_features, dtype=torch.float64)
    atoms = torch.randint(0, head.num_atoms, (6,))
    levels = torch.randint(0, head.coef_levels, (6,))
    with torch.no_grad():
        looked_up = state + head.advances()[atoms, levels]
        torch.testing.assert_close(looked_up, head.advance(state, atoms, levels), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", VARIANTS)
def test_head_sees_only_earlier_pairs_of_its_position(name):
    prior = prior_for(name).eval()
    codes = random_codes(name, batch=2)
    h = torch.randn(2, 4, 4, 16)
    base = prior.head.log_prob(h, codes)
    # Changing the last slot changes nothing but its own terms: earlier slots' terms are the same.
    if VARIANTS[name]["slots"] > 1:
        changed = Codes(codes.atoms.clone(), codes.levels.clone())
        last = changed.atoms[..., -1] != EMPTY
        changed.levels[..., -1] = torch.where(last, (changed.levels[..., -1] + 1) % VARIANTS[name]["coef_levels"], 0)
        diff = prior.head.log_prob(h, changed) - base
        assert torch.equal(diff[~last], torch.zeros_like(diff[~last]))


@pytest.mark.parametrize("name", VARIANTS)
def test_log_prob_of_a_batch_is_the_sum_of_its_parts(name):
    prior = prior_for(name).eval()
    codes = random_codes(name)
    with torch.no_grad():
        whole = prior.log_prob(codes)
        parts = torch.cat([prior.log_prob(codes[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(whole, parts)
    assert (whole < 0).all() and torch.isfinite(whole).all()


@pytest.mark.parametrize("name", ["omp", "vanilla", "lasso", "rvq", "qmp"])
def test_head_distribution_sums_to_one_over_all_valid_pair_lists(name):
    # One position, few atoms: enumerate every valid list and add up the probabilities.
    import itertools

    v = dict(VARIANTS[name], num_atoms=6, coef_levels=2 if name not in ("vanilla", "rvq") else 1)
    if v.get("stage_atoms"):
        v["stage_atoms"] = 3
    prior = PixelSNAIL(PriorConfig(**v, height=1, width=1, channels=8, blocks=1, res_per_block=1, heads=2)).eval()
    h = torch.randn(1, 1, 1, 8)
    counts = range(v["slots"] + 1) if v["variable_count"] else [v["slots"]]
    total = 0.0
    for count in counts:
        ranked = itertools.product(*(range(3 * k, 3 * k + 3) for k in range(count)))  # rank k's atoms in slot k
        lists = ranked if v.get("stage_atoms") else itertools.combinations(range(6), count)
        for atoms in lists:
            for levels in itertools.product(range(v["coef_levels"]), repeat=count):
                a = list(atoms) + [EMPTY] * (v["slots"] - count)
                lv = list(levels) + [0] * (v["slots"] - count)
                codes = Codes(torch.tensor(a).reshape(1, 1, 1, -1), torch.tensor(lv).reshape(1, 1, 1, -1))
                total += prior.head.log_prob(h, codes).exp().item()
    assert total == pytest.approx(1.0, abs=1e-5)


def test_a_residual_vqs_slot_chooses_among_its_stage_only():
    """Slot k of a staged head: an M-way choice, which never gives the atoms of another stage any
    probability, so the codes' own atoms get at least what the K*M-way head gives them."""
    staged = prior_for("rvq").eval()
    pooled = prior_for("rvq", stage_atoms=0).eval()
    pooled.load_state_dict(staged.state_dict())
    codes = random_codes("rvq")
    head, h = staged.head, torch.randn(6, 4, 4, 16)
    expected, state = 0.0, h
    with torch.no_grad():
        for k in range(2):  # the K*M-way logits of stage k's atoms, renormalised over them
            atoms = codes.atoms[..., k]
            logits = head.atom_out(state)[..., 8 * k : 8 * (k + 1)]
            expected = expected + logits.log_softmax(-1).gather(-1, (atoms - 8 * k)[..., None])[..., 0]
            state = state + head.update(head.pair_atom(atoms) + head.pair_level(codes.levels[..., k]))
        torch.testing.assert_close(head.log_prob(h, codes), expected)
        assert (staged.log_prob(codes) > pooled.log_prob(codes)).all()
        drawn = sample(staged, 64, generator=torch.Generator().manual_seed(0))
    stage = drawn.atoms // 8
    assert torch.equal(stage, torch.arange(2).expand_as(stage))
    with pytest.raises(ValueError, match="stage_atoms 5"):
        prior_for("rvq", stage_atoms=5)


@pytest.mark.slow  # training steps and sampling
@pytest.mark.parametrize("name", VARIANTS)
def test_a_few_steps_lower_the_loss_and_samples_are_valid(name):
    prior = prior_for(name)
    codes = random_codes(name, batch=8)
    maps = (codes,)
    before = bits_per_image(prior, maps, 0)
    train_prior(prior, maps, 0, steps=30, batch_size=8, lr=3e-3, progress=False)
    assert bits_per_image(prior, maps, 0) < before
    drawn = sample(prior.eval(), 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    v = VARIANTS[name]
    validate_codes(drawn, v["num_atoms"], v["coef_levels"])
    if not v["variable_count"]:
        assert drawn.present.all()
    assert drawn.atoms.shape == (5, 4, 4, v["slots"])


def test_conditional_prior_uses_the_top_codes():
    prior = prior_for("omp", conditioned=True).eval()
    bottom = random_codes("omp", batch=2)
    top_a, top_b = random_codes("omp", batch=2, height=2, width=2, seed=1), random_codes("omp", 2, 2, 2, seed=2)
    with torch.no_grad():
        assert not torch.allclose(prior.log_prob(bottom, top_a), prior.log_prob(bottom, top_b))
        drawn = sample(prior, 2, condition=top_a, generator=torch.Generator().manual_seed(0))
    validate_codes(drawn, 16, 8)
    with pytest.raises(ValueError, match="condition"):
        prior.log_prob(bottom)


def test_prior_checkpoint_round_trip(tmp_path):
    prior = prior_for("lasso")
    save_prior(tmp_path / "prior.pt", prior, None, 7, "abc")
    restored = load_prior(tmp_path / "prior.pt")
    assert restored.step == 7 and restored.fingerprint == "abc"
    codes = random_codes("lasso")
    with torch.no_grad():
        assert torch.equal(prior.eval().log_prob(codes), restored.prior.eval().log_prob(codes))


def test_prior_resume_of_another_models_checkpoint_is_refused(tmp_path):
    from sparse_vqvae.checkpoint import CheckpointError

    prior = prior_for("omp")
    maps = (random_codes("omp", batch=8),)
    train_prior(prior, maps, 0, steps=2, batch_size=4, checkpoint_path=tmp_path / "p.pt", fingerprint="aaa",
                progress=False)
    with pytest.raises(CheckpointError, match="another model"):
        train_prior(prior_for("omp"), maps, 0, steps=4, batch_size=4, checkpoint_path=tmp_path / "p.pt",
                    fingerprint="bbb", progress=False)


def test_condition_of_the_wrong_shape_is_refused():
    prior = prior_for("omp", conditioned=True)
    with pytest.raises(ValueError, match="condition"):
        prior.log_prob(random_codes("omp", batch=2), random_codes("omp", batch=2, height=3, width=3))


@pytest.mark.parametrize("conditioned", [False, True])
def test_training_reads_the_rows_of_its_seed_and_step(conditioned, tmp_path):
    """train_prior is the loop it always was, bit for bit: step s trains on the rows
    torch.randint(count, (batch,), generator=seed * 1_000_003 + s), Adam, the batch's mean bits (what the pipeline's
    committed priors were trained with) - whether the codes are in memory or (tests/test_code_store.py) streamed."""
    name = "lasso"
    top, bottom = random_codes(name, batch=10, height=2, width=2, seed=1), random_codes(name, batch=10, seed=2)
    maps = (top, bottom) if conditioned else (bottom,)
    level = 1 if conditioned else 0
    reference, trained = prior_for(name, conditioned, dropout=0.1), prior_for(name, conditioned, dropout=0.1)
    torch.manual_seed(3)
    optimizer, expected = torch.optim.Adam(reference.parameters(), lr=1e-3), []
    for step in range(5):
        rows = torch.randint(10, (4,), generator=torch.Generator().manual_seed(7 * 1_000_003 + step))
        loss = bits(reference.log_prob(maps[level][rows], maps[0][rows] if conditioned else None)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        expected.append(loss.item())
    torch.manual_seed(3)
    losses = []
    train_prior(trained, maps, level, 5, batch_size=4, seed=7, progress=False,
                on_metrics=lambda step, metrics: losses.append(metrics["bits_per_image"]))
    assert losses == expected
    for (key, a), b in zip(reference.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(a, b), key


class _RecordingMaps(MapsInMemory):
    """Code maps in memory that note the rows each read asks for."""

    def __init__(self, maps) -> None:
        super().__init__(maps)
        self.read: list[list[int]] = []

    def batch(self, rows):
        self.read.append(torch.as_tensor(rows).tolist())
        return super().batch(rows)


def _data_parallel_worker(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        source, prior, losses = _RecordingMaps((random_codes("omp", batch=10),)), prior_for("omp"), []
        model = DistributedDataParallel(PriorLoss(prior), find_unused_parameters=True)
        run_prior_training(model, torch.optim.SGD(prior.parameters(), lr=1e-3), source, 0, 3, batch_size=4, seed=5,
                           rank=rank, world_size=2, progress=False,
                           on_metrics=lambda step, metrics: losses.append(metrics["bits_per_image"]))
        results[rank] = (source.read, losses, {key: value.clone() for key, value in prior.state_dict().items()})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two real processes (torch.distributed, gloo)
def test_two_data_parallel_workers_take_half_of_each_steps_rows(tmp_path):
    """On 2 DDP workers each step's batch (the rows of its seed and step) is split in halves, rank 0 the first; the
    workers report the whole batch's mean, stay identical, and train the prior one process trains (up to rounding:
    the gradients sum in another order; plain SGD, which Adam's normalisation of tiny gradients would not let show)."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_data_parallel_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
        (read0, losses0, state0), (read1, losses1, state1) = results[0], results[1]
    for step in range(3):
        rows = step_rows(10, 4, 5, step).tolist()
        assert read0[step] == rows[:2] and read1[step] == rows[2:]
    assert losses0 == losses1 and all(torch.equal(state0[key], state1[key]) for key in state0)
    alone, losses = prior_for("omp"), []
    torch.set_num_threads(1)
    run_prior_training(PriorLoss(alone), torch.optim.SGD(alone.parameters(), lr=1e-3), (random_codes("omp", batch=10),),
                       0, 3, batch_size=4, seed=5, progress=False,
                       on_metrics=lambda step, metrics: losses.append(metrics["bits_per_image"]))
    assert losses0 == pytest.approx(losses, rel=1e-5)
    for key, value in alone.state_dict().items():
        torch.testing.assert_close(state0[key], value, rtol=1e-4, atol=1e-5)


def test_a_resumed_priors_checkpoint_has_the_bytes_of_an_uninterrupted_one(tmp_path):
    """Resumed at step 3 of 6 (without dropout: train_prior in one process keeps no random state; the Ray stage
    keeps its workers'), the checkpoint at step 6 is byte for byte that of a run never stopped - strings from an
    unpickled optimizer state included."""
    maps = (random_codes("omp", batch=10),)
    straight, resumed = tmp_path / "straight.pt", tmp_path / "resumed.pt"
    train_prior(prior_for("omp"), maps, 0, 6, batch_size=4, checkpoint_path=straight, checkpoint_every=3,
                progress=False)
    train_prior(prior_for("omp"), maps, 0, 3, batch_size=4, checkpoint_path=resumed, checkpoint_every=3,
                progress=False)
    train_prior(prior_for("omp"), maps, 0, 6, batch_size=4, checkpoint_path=resumed, checkpoint_every=3,
                progress=False)
    assert load_prior(resumed).step == 6 and resumed.read_bytes() == straight.read_bytes()
