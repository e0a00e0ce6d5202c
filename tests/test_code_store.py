import shutil

import pytest
import torch

from sparse_vqvae.atomic import NotOurFolderError
from sparse_vqvae.code_store import CodeStore, CodeStoreError, collate_codes, extract_codes
from sparse_vqvae.vqvae import VQVAE2

from .tiny import SELECTION_FNS, Images, tiny_config, tiny_images


def trained_tiny(selection_fn, levels=2):
    torch.manual_seed(0)
    model = VQVAE2(tiny_config(selection_fn, maps=levels))
    model.train()(tiny_images(8, 16))  # initialise the quantizers from data
    return model.eval()


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_round_trip_equals_the_extracted_codes(selection_fn, levels, tmp_path):
    model = trained_tiny(selection_fn, levels)
    images = tiny_images(10, 16, seed=4)
    result = extract_codes(model, Images(images), tmp_path / "codes", batch_size=4, progress=False)
    assert result["images"] == 10 and result["images_per_s"] > 0
    store = CodeStore(tmp_path / "codes", expected_fingerprint=model.fingerprint())
    assert len(store) == 10 and store.meta.selection_fn == selection_fn
    indices, maps = collate_codes([store[i] for i in range(len(store))])
    assert indices.tolist() == list(range(10))
    with torch.no_grad():
        expected = model.encode(images)[1]
    assert len(maps) == levels
    for stored, fresh in zip(maps, expected):
        assert stored.equal(fresh)
    with torch.no_grad():  # the stored codes decode to the model's reconstruction
        assert torch.equal(model.decode_codes(maps), model(images).reconstruction)
    assert not (tmp_path / "codes.tmp").exists()


def test_another_models_store_is_refused(tmp_path):
    extract_codes(trained_tiny("omp"), Images(tiny_images(4, 16)), tmp_path / "codes", progress=False)
    other = trained_tiny("vanilla")
    with pytest.raises(CodeStoreError, match="extract the codes again"):
        CodeStore(tmp_path / "codes", expected_fingerprint=other.fingerprint())


def test_truncated_missing_and_incomplete_stores_give_clear_errors(tmp_path):
    with pytest.raises(CodeStoreError, match="no code store at"):
        CodeStore(tmp_path / "nothing")
    extract_codes(trained_tiny("omp"), Images(tiny_images(6, 16)), tmp_path / "codes", progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "codes", broken)
    data = (broken / "data.mdb").read_bytes()
    (broken / "data.mdb").write_bytes(data[: len(data) // 3])
    with pytest.raises(CodeStoreError, match="truncated"):
        CodeStore(broken)
    (broken / "manifest.json").unlink()
    with pytest.raises(CodeStoreError, match="did not finish"):
        CodeStore(broken)
    # A store whose extraction died before the metadata record was written.
    import lmdb

    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "codes", partial)
    env = lmdb.open(str(partial))
    with env.begin(write=True) as txn:
        txn.delete(b"meta")
    env.close()
    (partial / "manifest.json").write_text('{"data_bytes": %d}' % (partial / "data.mdb").stat().st_size)
    with pytest.raises(CodeStoreError, match="no metadata record"):
        CodeStore(partial)


@pytest.mark.parametrize("version", [99, 2])
def test_other_format_version_is_refused(version, tmp_path):
    import json

    import lmdb

    extract_codes(trained_tiny("omp"), Images(tiny_images(4, 16)), tmp_path / "codes", progress=False)
    env = lmdb.open(str(tmp_path / "codes"))
    with env.begin(write=True) as txn:
        meta = json.loads(txn.get(b"meta"))
        meta["format_version"] = version
        if version == 2:  # format 2 did not say whether pair counts vary
            del meta["variable_count"]
        txn.put(b"meta", json.dumps(meta).encode())
    env.close()
    size = (tmp_path / "codes" / "data.mdb").stat().st_size
    (tmp_path / "codes" / "manifest.json").write_text(json.dumps({"data_bytes": size}))
    with pytest.raises(CodeStoreError, match=f"format {version}; this code reads 3: extract the codes again"):
        CodeStore(tmp_path / "codes")


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_priors_sampled_from_a_store_decode_to_images(selection_fn, levels, tmp_path):
    from sparse_vqvae.codes import validate_codes
    from sparse_vqvae.generation import sample_maps
    from sparse_vqvae.pixelsnail import PixelSNAIL
    from sparse_vqvae.prior_train import prior_configs

    model = trained_tiny(selection_fn, levels)
    extract_codes(model, Images(tiny_images(4, 16)), tmp_path / "codes", progress=False)
    meta = CodeStore(tmp_path / "codes").meta
    priors = [PixelSNAIL(config).eval() for config in prior_configs(meta, channels=8, blocks=1, heads=2)]
    maps = sample_maps(priors, 3, generator=torch.Generator().manual_seed(0))
    for sampled in maps:
        validate_codes(sampled, meta.num_atoms, meta.coef_levels)
        if not meta.variable_count:
            assert sampled.present.all()
    with torch.no_grad():
        images = model.decode_codes(maps)
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()


def test_the_map_grows_when_full(tmp_path, monkeypatch):
    import sparse_vqvae.code_store as code_store

    monkeypatch.setattr(code_store, "_INITIAL_MAP_SIZE", 32 << 10)  # 32 KiB: full after a few records
    model = trained_tiny("omp")
    extract_codes(model, Images(tiny_images(300, 16)), tmp_path / "codes", batch_size=100, progress=False)
    store = CodeStore(tmp_path / "codes", model.fingerprint())
    assert len(store) == 300 and store[299][0] == 299
    assert (tmp_path / "codes" / "data.mdb").stat().st_size > 32 << 10  # it did outgrow the first map


def test_models_beyond_the_stored_integer_widths_are_refused():
    from sparse_vqvae.code_store import StoreMetadata

    model = VQVAE2(tiny_config("omp", num_atoms=40000))
    with pytest.raises(CodeStoreError, match="at most 32767 atoms"):
        StoreMetadata.for_model(model, [[2, 2], [4, 4]])


def test_extraction_refuses_to_replace_a_folder_that_is_not_a_code_store(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.png").write_bytes(b"precious")
    with pytest.raises(NotOurFolderError, match="refusing to delete"):
        extract_codes(trained_tiny("omp"), Images(tiny_images(4, 16)), folder, progress=False)
    assert (folder / "holiday.png").read_bytes() == b"precious"
    extract_codes(trained_tiny("omp"), Images(tiny_images(4, 16)), tmp_path / "codes", progress=False)
    assert sorted(p.name for p in (tmp_path / "codes").iterdir()) == ["data.mdb", "manifest.json"]  # no lock file


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("selection_fn", ["vanilla", "rvq", "omp", "lasso"])
def test_batch_reads_equal_the_extracted_codes_in_the_stores_widths(selection_fn, levels, tmp_path):
    """``CodeStore.batch`` of any rows (unordered, repeated) and ``code_batches`` over the store give the codes the
    model produced, in int16 atoms and uint8 levels; ``load_maps`` the old int64 stack."""
    from sparse_vqvae.code_store import code_batches
    from sparse_vqvae.prior_train import load_maps

    model = trained_tiny(selection_fn, levels)
    images = tiny_images(11, 16, seed=4)
    extract_codes(model, Images(images), tmp_path / "codes", batch_size=4, progress=False)
    store = CodeStore(tmp_path / "codes", model.fingerprint())
    with torch.no_grad():
        fresh = model.encode(images)[1]
    rows = torch.tensor([7, 0, 7, 10, 3])
    for read, expected in zip(store.batch(rows), fresh):
        assert read.atoms.dtype == torch.int16 and read.levels.dtype == torch.uint8
        assert torch.equal(read.atoms.long(), expected.atoms[rows]) and torch.equal(read.levels.long(), expected.levels[rows])
    streamed = list(code_batches(store, 3))
    assert [batch[0].atoms.shape[0] for batch in streamed] == [3, 3, 3, 2]
    for level, expected in enumerate(fresh):
        assert torch.equal(torch.cat([batch[level].atoms for batch in streamed]).long(), expected.atoms)
        assert torch.equal(torch.cat([batch[level].levels for batch in streamed]).long(), expected.levels)
    for stacked, expected in zip(load_maps(store), fresh):
        assert stacked.atoms.dtype == torch.int64 and stacked.equal(expected)
    assert all(m.atoms.shape[0] == 0 for m in store.batch([]))
    with pytest.raises(IndexError):
        store.batch([11])


@pytest.mark.parametrize("selection_fn", ["vanilla", "rvq", "omp", "lasso"])
def test_streamed_fit_bits_and_training_equal_those_of_the_codes_in_memory(selection_fn, tmp_path):
    """FrequencyModel.fit, bits_per_image and train_prior read the store a batch at a time and give, bit for bit,
    what they give on the int64 code maps in memory (the code maps they took before codes streamed)."""
    from sparse_vqvae.entropy_coding import FrequencyModel
    from sparse_vqvae.pixelsnail import PixelSNAIL, bits
    from sparse_vqvae.prior_train import bits_per_image, prior_configs, train_prior

    model = trained_tiny(selection_fn)
    images = tiny_images(13, 16, seed=5)
    extract_codes(model, Images(images), tmp_path / "codes", batch_size=5, progress=False)
    store = CodeStore(tmp_path / "codes", model.fingerprint())
    with torch.no_grad():
        in_memory = model.encode(images)[1]
    FrequencyModel.fit(in_memory, store.meta).save(tmp_path / "memory.pt")
    FrequencyModel.fit(store, store.meta, batch_size=4).save(tmp_path / "streamed.pt")
    assert (tmp_path / "memory.pt").read_bytes() == (tmp_path / "streamed.pt").read_bytes()
    for level, config in enumerate(prior_configs(store.meta, channels=8, blocks=1, res_per_block=1, dropout=0.1)):
        runs = {}
        for name, codes in (("memory", in_memory), ("streamed", store)):
            torch.manual_seed(level)
            prior, losses = PixelSNAIL(config), []
            train_prior(prior, codes, level, 4, batch_size=6, seed=level, checkpoint_path=tmp_path / f"{name}{level}.pt",
                        checkpoint_every=2, progress=False, on_metrics=lambda step, m: losses.append(m["bits_per_image"]))
            runs[name] = (losses, bits_per_image(prior, codes, level, batch_size=4))
        assert runs["memory"] == runs["streamed"]
        assert (tmp_path / f"memory{level}.pt").read_bytes() == (tmp_path / f"streamed{level}.pt").read_bytes()
        with torch.no_grad():  # every image counted once: the mean of one pass over all of them
            whole = bits(prior.eval().log_prob(in_memory[level], in_memory[0] if level else None)).mean()
        assert runs["streamed"][1] == pytest.approx(float(whole), rel=1e-5)


def test_streaming_holds_a_batch_not_the_store(tmp_path):
    """Fitting the frequency model, the bits per image and prior training over a store twenty times larger peak at
    about the same memory (traced: numpy and the LMDB reads, what reading all codes at once grows with)."""
    import tracemalloc

    from sparse_vqvae.entropy_coding import FrequencyModel
    from sparse_vqvae.pixelsnail import PixelSNAIL
    from sparse_vqvae.prior_train import bits_per_image, prior_configs, train_prior

    model = trained_tiny("omp")
    peaks = {}
    for count in (40, 800):
        extract_codes(model, Images(tiny_images(count, 32, seed=count)), tmp_path / f"codes{count}", batch_size=200,
                      progress=False)
        store = CodeStore(tmp_path / f"codes{count}", model.fingerprint())
        prior = PixelSNAIL(prior_configs(store.meta, channels=8, blocks=1, res_per_block=1)[1])
        for name, work in (("fit", lambda: FrequencyModel.fit(store, store.meta, batch_size=20)),
                           ("bits", lambda: bits_per_image(prior, store, 1, batch_size=20)),
                           ("train", lambda: train_prior(prior, store, 1, 2, batch_size=20, progress=False))):
            if count == 40:
                work()  # a first call's one-off allocations (lazy initialisations) out of the measure
            tracemalloc.start()
            work()
            peaks.setdefault(name, []).append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    for name, (small, large) in peaks.items():
        assert large < 1.5 * small, (name, peaks)
