"""A file decodes to the codes it was written from, whatever the decoder's thread count or device.

Both entropy models: the factorised one (integer tables) and the PixelSNAIL priors, whose
probabilities are computed by the network on each side.
"""

import copy

import pytest
import torch

from sparse_vqvae.codec import Codec, read_codes
from sparse_vqvae.prior_coding import PriorEntropyModel

from .test_codec import trained
from .test_prior_coding import with_priors
from .tiny import SELECTION_FNS, tiny_images

pytestmark = pytest.mark.slow  # trains a prior per quantizer; sequential prior coding

IMAGES = tiny_images(8, 16, seed=7)


@pytest.fixture(scope="module", params=SELECTION_FNS)
def codecs(request) -> list[Codec]:
    factorised = trained(request.param)
    return [factorised, Codec(factorised.model, with_priors(factorised))]


def on_device(codec: Codec, device: str) -> Codec:
    """A copy of ``codec`` whose networks run on ``device``."""
    model = copy.deepcopy(codec.model).to(device)
    entropy = codec.entropy
    if isinstance(entropy, PriorEntropyModel):
        entropy = PriorEntropyModel([copy.deepcopy(prior).to(device) for prior in entropy.priors], entropy.fingerprint)
    return Codec(model, entropy)


def codes_of(codec: Codec, image: torch.Tensor) -> tuple:
    with torch.no_grad():
        return tuple(codes[0].to("cpu") for codes in codec.model.encode(image[None].to(codec.device))[1])


def assert_decode_to(files: list[bytes], expected: list[tuple], codec: Codec) -> None:
    for data, want in zip(files, expected):
        _, got = read_codes(data, codec.entropy)
        assert all(g.equal(w) for g, w in zip(got, want))


def test_files_written_with_two_threads_decode_with_one(codecs):
    threads = torch.get_num_threads()
    try:
        for codec in codecs:
            torch.set_num_threads(2)
            files = [codec.compress(image) for image in IMAGES]
            expected = [codes_of(codec, image) for image in IMAGES]
            torch.set_num_threads(1)
            assert_decode_to(files, expected, codec)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_files_written_on_cuda_decode_on_the_cpu(codecs):
    for codec in codecs:
        gpu = on_device(codec, "cuda")
        files = [gpu.compress(image) for image in IMAGES]
        expected = [codes_of(gpu, image) for image in IMAGES]
        assert_decode_to(files, expected, codec)
