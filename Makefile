# Two entry points for a fresh machine: `make run` (the main job) and `make test`.
# Both create .venv on first use and reuse it while pyproject.toml and constraints.txt are unchanged.

VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# The offline page for `dvc plots show` (Vega inlined from the installed vl-convert-python); .dvc/config's
# plots.html_template names this path.
PLOTS_TEMPLATE := $(VENV)/share/sparse-vqvae/dvc_plots.html
# dvc.yaml's commands say `python`: make it the project's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install run test test-fast plots benchmark study flow sweep run-cifar10 photo-model mlflow-ui

# The C extensions pip compiles (and their shared header); an edited source is built again (`dvc repro` must not run the old binary
# while dvc.lock records the new source).
KERNELS := sparse_vqvae/_incremental.c sparse_vqvae/sparse_coding/_rowwise.c sparse_vqvae/_buffers.h
BUILT := $(VENV)/.kernels-built

install: $(INSTALLED) $(BUILT) $(PLOTS_TEMPLATE)

# The library (editable) with the pipeline's, the tests' and the benchmarks' extras, every version pinned. The
# pipeline's packages, tasks/ and flows/, are not installed (a wheel leaves them out): a .pth puts this folder on
# the venv's path, so they import from anywhere in it (the CLI's MLflow model source, benchmarks/, Ray's workers).
$(INSTALLED): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --constraint constraints.txt --editable '.[pipeline,test,bench]'
	$(PYTHON) -c 'import sys, sysconfig, pathlib; pathlib.Path(sysconfig.get_path("purelib"), "sparse_vqvae_pipeline.pth").write_text(sys.argv[1] + "\n")' "$(CURDIR)"
	$(PYTHON) -m tasks.offline_plots $(PLOTS_TEMPLATE)
	touch $(BUILT) $@

$(BUILT): $(KERNELS) | $(INSTALLED)
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation --editable .
	touch $@

$(PLOTS_TEMPLATE): | $(INSTALLED)
	$(PYTHON) -m tasks.offline_plots $@

# The main job: the whole pipeline on the embedded photographs (params.yaml as committed).
# params.yaml is checked first, so a typo fails before any stage starts.
run: install
	$(PYTHON) -m tasks.params
	dvc repro

# The same stages as a Prefect flow (a temporary local Prefect server unless PREFECT_API_URL is set); each stage's
# output in its task's log, a summary artifact. Settings: SPARSE_VQVAE_FLOW_STAGE_TIMEOUT (seconds), SPARSE_VQVAE_RAY_*.
flow: install
	$(PYTHON) -m flows.pipeline

# the equal-rate study's families (flows/sweep.py's grid), each in sweeps/<variant>/, results in sweeps/summary.csv;
# SPARSE_VQVAE_FLOW_SWEEP_CONCURRENCY=2 runs two variants at once (each a whole pipeline: twice the CPUs and memory).
sweep: install
	$(PYTHON) -m flows.sweep

# The real CIFAR-10 photographs in ../shared (ImageFolder layout), 2% held out for testing, as a DVC experiment;
# its priors are class-conditional (VQ-VAE-2's ImageNet priors are): samples of each class, `sample --class dog`.
run-cifar10: install
	dvc exp run -S data.name=imagefolder -S data.root=../shared/data/cifar10-jpeg/train -S data.test_fraction=0.02 \
		-S prior.class_conditional=true

# The photo codec's recipe (issue 12): residual VQ, one /8 map of 10 stages x 1024 entries trained with stage
# dropout (quality q = the first q stages), on fresh 128x128 crops of ../shared/data/photos (last 9 held out); its
# prior attends to a window of 4 rows (issue 27: as good as the whole map, 3-4x faster to code).
PHOTO_RECIPE := -S data.name=photos -S data.root=../shared/data/photos -S data.image_size=128 \
	-S data.tile_size=256 -S data.test_photos=9 \
	-S model.selection_fn=rvq -S model.maps=1 -S model.num_strides=2 -S model.channels=192 \
	-S model.res_channels=64 -S model.embed_dim=64 -S model.num_atoms=1024 -S model.stages=10 \
	-S model.stage_dropout=true \
	-S pretrain.steps=500 -S pretrain.batch_size=16 \
	-S train.steps=32000 -S train.batch_size=16 -S train.eval_every=1000 -S train.checkpoint_every=200 \
	-S ray.num_workers=1 -S extract.batch_size=32 \
	-S prior.steps=1000 -S prior.batch_size=8 -S prior.positions=none -S prior.attention_rows=4 \
	-S prior.checkpoint_every=200 \
	-S evaluate.batch_size=16 -S evaluate.grid_images=16 -S evaluate.samples=4 \
	-S evaluate.rate_distortion_images=124 -S evaluate.prior_coding_images=2

# Then the phase-1 model is continued (issue 27): stage dropout gives the top quality one training image in ten,
# and the encoder learns a latent the first stages code well at the top quality's cost; phase 2 trains half the
# images at the top quality, at a third of the learning rate.
PHOTO_PHASE1 := checkpoints/photo-phase1.pt
PHOTO_CONTINUED := -S pretrain.init_from=$(PHOTO_PHASE1) -S model.stage_dropout_top_share=0.5 \
	-S train.steps=6000 -S train.lr=0.0001

# Train the photo codec (hours here; a rerun resumes) as two DVC experiments: stage 1 of the recipe, then the whole
# pipeline continuing it.
photo-model: install
	SPARSE_VQVAE_RAY_CPUS_PER_WORKER=2 dvc exp run $(PHOTO_RECIPE) train_vqvae
	cp models/vqvae/model.pt $(PHOTO_PHASE1)
	SPARSE_VQVAE_RAY_CPUS_PER_WORKER=2 dvc exp run $(PHOTO_RECIPE) $(PHOTO_CONTINUED)

# Compare runs: MLflow's UI at http://127.0.0.1:5000; the address it prints opens the pipeline's runs in the model
# training view with the columns that compare them (the experiment's shared view). Registered models: "Model registry".
mlflow-ui: install
	@$(PYTHON) -m tasks.tracking http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000

# Everything (CI): the unit tests and the end-to-end runs of DVC, Prefect, Ray, the sweep and the CLI; the 25 slowest
# tests' times at the end.
test: install
	$(PYTHON) -m pytest --durations=25

# The unit tests only (under 2 minutes here): the tests marked slow are left out.
test-fast: install
	$(PYTHON) -m pytest -m "not slow"

# The training curves, rate-distortion and atom usage as one HTML page that renders offline: dvc_plots/index.html
plots: install
	dvc plots show

# The full-size benchmark (65,536 signals); writes benchmarks/results/sparse_coding.json.
benchmark: install
	$(PYTHON) benchmarks/sparse_coding.py

# The equal-rate study (about a day of a 2-core CPU; resumes from benchmarks/.cache/study): every quantizer family
# at several rates, held-out embedded photographs and CIFAR-10, and every embedded model again at twice the
# steps to check the budget; writes benchmarks/results/rate_distortion_study.*
study: install
	$(PYTHON) benchmarks/rate_distortion_study.py --doubling-check
