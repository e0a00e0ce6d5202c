"""Class-conditional priors (issue 30, part 3: `sample --class dog` as VQ-VAE-2 conditions on ImageNet's classes):
a class embedding in every residual block, one row for "no class" that coding uses."""

from __future__ import annotations

import pytest
import torch

from sparse_vqvae.generation import CompiledBackbone, IncrementalBackbone, generate, sample_maps
from sparse_vqvae.pixelsnail import PixelSNAIL, PriorConfig

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
