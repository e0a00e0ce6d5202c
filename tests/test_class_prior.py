"""Class-conditional priors (issue 30, part 3: `sample --class dog` as VQ-VAE-2 conditions on ImageNet's classes):
a class embedding in every residual block, one row for "no class" that coding uses; trained on the images' labels
with label dropout, and wired to prepare_data's labels by the train_prior stage."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from sparse_vqvae.generation import CompiledBackbone, IncrementalBackbone, generate, sample_maps
from sparse_vqvae.pixelsnail import PixelSNAIL, PriorConfig, bits
from sparse_vqvae.prior_train import PriorLoss, load_prior, run_prior_training, step_draws, step_rows, train_prior
from tasks.layout import DATA_SUMMARY, labels_path
from tasks.params import parse_params
from tasks.synthesis import spread_labels
from tasks.train_prior import training_labels

from .test_pixelsnail import VARIANTS, random_codes

CLASSES = ("cat", "dog", "ship")


def class_prior(name="omp", conditioned=False, top_size=2, **overrides) -> PixelSNAIL:
    args = dict(VARIANTS[name], height=4, width=4, channels=16, blocks=1, res_per_block=1, heads=2, dropout=0.0,
                classes=CLASSES)
    if conditioned:
        args["condition"] = ({k: v for k, v in VARIANTS[name].items() if k != "variable_count"}
                             | dict(height=top_size, width=top_size))
    args.update(overrides)
    torch.manual_seed(0)
    prior = PixelSNAIL(PriorConfig(**args)).eval()
    with torch.no_grad():  # a trained prior's classes and outputs differ; untrained ones start from ties
        prior.class_embed.weight.normal_()
        for parameter in prior.head.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    return prior


def test_the_class_moves_the_probabilities_and_no_label_means_no_class():
    prior = class_prior()
    codes = random_codes("omp", batch=3)
    with torch.no_grad():
        by_class = [prior.log_prob(codes, labels=torch.full((3,), k)) for k in range(len(CLASSES))]
        unknown = prior.log_prob(codes)
    assert not torch.allclose(by_class[0], by_class[1])
    torch.testing.assert_close(unknown, prior.log_prob(codes, labels=prior.no_class(3)))
    assert prior.class_labels(["dog", "cat"]).tolist() == [1, 0]


@pytest.mark.parametrize("form", [IncrementalBackbone, CompiledBackbone])
@pytest.mark.parametrize("conditioned", [False, True])
def test_position_by_position_the_class_gives_the_full_pass_features(form, conditioned):
    """Generation and prior coding run the backbone one position at a time, in PyTorch and in C: with a class
    (and the top codes) as condition, the features of the full pass."""
    prior = class_prior(conditioned=conditioned).double()
    codes = random_codes("omp", batch=3, seed=4)
    labels = torch.tensor([2, 0, 1])
    with torch.no_grad():
        top = random_codes("omp", batch=3, height=2, width=2, seed=5) if conditioned else None
        features = prior.condition_features(top, (4, 4), labels)
        full = prior.backbone(codes, features)
        incremental = form(prior, 3, features, (4, 4))
        for y in range(4):
            for x in range(4):
                torch.testing.assert_close(incremental.features_at(y, x), full[:, :, y, x], rtol=0, atol=1e-12)
                incremental.write_codes(y, x, codes.atoms[:, y, x], codes.levels[:, y, x])


def test_samples_of_a_class_follow_that_class():
    """Drawn near temperature 0 (each symbol the prior's most likely), images of one class get the same codes and
    images of other classes others: the label, not the batch position, decides - through both maps."""
    top, bottom = class_prior(height=2, width=2), class_prior(conditioned=True)
    labels = torch.tensor([0, 1, 0, 1])
    maps = sample_maps([top, bottom], 4, temperature=1e-4, generator=torch.Generator().manual_seed(3), labels=labels)
    for codes in maps:
        assert torch.equal(codes.atoms[0], codes.atoms[2]) and torch.equal(codes.atoms[1], codes.atoms[3])
        assert not torch.equal(codes.atoms[0], codes.atoms[1])
    assert maps[1].atoms.shape == (4, 4, 4, 2)


def test_wrong_classes_and_labels_are_refused_by_name():
    prior = class_prior()
    with pytest.raises(ValueError, match="unknown class horse; this prior's classes: cat, dog, ship"):
        prior.class_labels(["horse"])
    with pytest.raises(ValueError, match="labels must be"):
        prior.log_prob(random_codes("omp", batch=2), labels=torch.tensor([0, 7]))
    plain = PixelSNAIL(PriorConfig(**VARIANTS["omp"], height=4, width=4, channels=16, blocks=1, res_per_block=1,
                                   heads=2))
    with pytest.raises(ValueError, match="not class-conditional"):
        plain.class_labels(["dog"])
    with pytest.raises(ValueError, match="not class-conditional"):
        generate(plain, 1, None, None, labels=torch.tensor([0]))
    assert "classes" not in plain.arguments and class_prior().arguments["classes"] == CLASSES


# ------------------------------------------------------------------------------------------ training with labels

def labelled_maps(batch=12):
    """A top map and a bottom map of ``batch`` images and a class label each."""
    top, bottom = random_codes("omp", batch=batch, height=2, width=2, seed=7), random_codes("omp", batch=batch, seed=8)
    return (top, bottom), torch.arange(batch) % len(CLASSES)


def changed_class_rows(label_dropout: float, seed: int = 3) -> tuple[set[int], set[int]]:
    """One SGD step of the top prior on labelled codes: the class embedding's rows it moved, and the rows the
    step's labels (after label dropout, "no class" = 3) say it should have. The step is checked against one taken
    by hand on the bits of its rows under their own labels."""
    maps, labels = labelled_maps()
    prior = class_prior(height=2, width=2).train()
    by_hand = copy.deepcopy(prior)
    before = prior.class_embed.weight.detach().clone()
    run_prior_training(PriorLoss(prior), torch.optim.SGD(prior.parameters(), lr=0.1), maps, 0, 1, batch_size=6,
                       seed=seed, labels=labels, label_dropout=label_dropout, progress=False)
    rows, unlabelled = step_draws(len(labels), 6, seed, 0, label_dropout)
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    PriorLoss(by_hand)(maps[0][rows], labels=labels[rows], unlabelled=unlabelled).mean().backward()
    optimizer.step()
    for trained, expected in zip(prior.parameters(), by_hand.parameters()):
        torch.testing.assert_close(trained, expected, rtol=0, atol=0)
    moved = (prior.class_embed.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    expected = set(labels[rows][~unlabelled].tolist()) | ({len(CLASSES)} if unlabelled.any() else set())
    return set(moved), expected


def test_the_labels_reach_the_loss_and_dropped_ones_train_the_no_class_row():
    """A step trains each image under its own label and moves exactly the class rows of its images' labels; with
    label dropout, the dropped images train the "no class" row instead of their own."""
    moved, expected = changed_class_rows(label_dropout=0.0)
    assert moved == expected and len(CLASSES) not in moved
    moved, expected = changed_class_rows(label_dropout=0.5)
    assert moved == expected and len(CLASSES) in moved


def test_the_loss_is_the_bits_of_each_image_under_its_own_class():
    (top, _), labels = labelled_maps(batch=4)
    prior = class_prior(height=2, width=2)
    with torch.no_grad():
        loss = PriorLoss(prior)(top, labels=labels, unlabelled=torch.tensor([False, True, False, False]))
        alone = [bits(prior.log_prob(top[i : i + 1], labels=labels[i : i + 1])) for i in (0, 2, 3)]
        unknown = bits(prior.log_prob(top[1:2]))
    torch.testing.assert_close(loss, torch.cat([alone[0], unknown, *alone[1:]]))


def test_label_dropout_leaves_the_rows_and_drops_a_share_of_every_image():
    """The rows a step reads do not move with the dropout - they are those priors read before they had classes, so
    an unconditional prior keeps its bytes - and the dropped images are not always the same ones."""
    draws = [step_draws(50, 64, 2, step, 0.25) for step in range(40)]
    for step, (rows, _) in enumerate(draws):
        before_classes = torch.randint(50, (64,), generator=torch.Generator().manual_seed(2 * 1_000_003 + step))
        assert torch.equal(rows, before_classes) and torch.equal(rows, step_rows(50, 64, 2, step))
    dropped = torch.cat([unlabelled for _, unlabelled in draws]).float().mean()
    assert 0.2 < dropped < 0.3
    rows = torch.cat([rows for rows, _ in draws])
    unlabelled = torch.cat([unlabelled for _, unlabelled in draws])
    assert set(rows[unlabelled].tolist()) & set(rows[~unlabelled].tolist())  # images both kept and dropped


def test_a_trained_conditional_prior_samples_each_class(tmp_path):
    """Top and bottom priors trained one step on labelled codes, saved and loaded, draw images of the classes asked
    for: the label, not the batch position, decides."""
    maps, labels = labelled_maps()
    priors = []
    for level, prior in enumerate([class_prior(height=2, width=2), class_prior(conditioned=True)]):
        train_prior(prior, maps, level, 1, batch_size=6, checkpoint_path=tmp_path / f"{level}.pt", labels=labels,
                    progress=False)
        priors.append(load_prior(tmp_path / f"{level}.pt").prior.eval())
    assert priors[1].config.classes == CLASSES
    asked = priors[0].class_labels(["ship", "cat", "ship", "cat"])
    drawn = sample_maps(priors, 4, temperature=1e-4, generator=torch.Generator().manual_seed(0), labels=asked)
    for codes in drawn:
        assert torch.equal(codes.atoms[0], codes.atoms[2]) and torch.equal(codes.atoms[1], codes.atoms[3])
    assert not all(torch.equal(codes.atoms[0], codes.atoms[1]) for codes in drawn)


def test_training_refuses_missing_or_misaligned_labels():
    maps, labels = labelled_maps()
    with pytest.raises(ValueError, match="class-conditional: train it on the images' labels"):
        train_prior(class_prior(height=2, width=2), maps, 0, 1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="11 labels for the codes of 12 images"):
        train_prior(class_prior(height=2, width=2), maps, 0, 1, batch_size=4, labels=labels[:11], progress=False)


def test_samples_for_the_synthesis_measure_spread_over_the_classes():
    assert spread_labels(class_prior(), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    plain = PixelSNAIL(PriorConfig(**VARIANTS["omp"], height=4, width=4, channels=16, blocks=1, res_per_block=1,
                                   heads=2))
    assert spread_labels(plain, 7) is None


# ------------------------------------------------------------------------------------------ the pipeline's labels

def test_the_stage_reads_prepare_datas_labels_and_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = parse_params({"prior": {"class_conditional": False}})
    conditional = parse_params({"prior": {"class_conditional": True}})
    assert training_labels(plain, 4) is None
    with pytest.raises(ValueError, match=r"prior.class_conditional needs the training images' classes; "
                                         r"data/prepared/train_labels.npy and the class names in "
                                         r"data/prepared/summary.json are missing: data.name 'embedded' has none"):
        training_labels(conditional, 4)
    labels_path("train").parent.mkdir(parents=True)
    np.save(labels_path("train"), np.array([0, 2, 1, 2]))
    DATA_SUMMARY.write_text(json.dumps({"classes": list(CLASSES)}))
    labels, classes = training_labels(conditional, 4)
    assert labels.tolist() == [0, 2, 1, 2] and classes == CLASSES
    with pytest.raises(ValueError, match="holds 4 labels for the 5 images of codes/train: rerun prepare_data"):
        training_labels(conditional, 5)
