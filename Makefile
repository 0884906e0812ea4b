# Two commands: `make demo` and `make test`. Each one sets up .venv first (idempotent:
# the stamp file makes a second run skip what is already installed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -c constraints.txt
STAMP  := $(VENV)/.installed
export TQDM_MININTERVAL ?= 2

.PHONY: setup demo test test-unit test-notebooks lab bench gpu-check clean strip notebooks check-notebooks studies mutation

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m bgtutorial.demo

test: $(STAMP)
	BGT_SMOKE=1 TQDM_DISABLE=1 MPLBACKEND=Agg $(PY) -m pytest tests \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=600 notebooks

test-unit: $(STAMP)
	$(PY) -m pytest tests

# as root (Docker images, cloud GPU boxes) Jupyter refuses to start without --allow-root
lab: $(STAMP)
	$(PY) -m jupyter lab notebooks $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

# On a lent GPU: both CUB tiers x three methods on the synthetic 200-class archive (images/s,
# peak memory, the batch module's share of a step, the largest batch), then the benchmarks.
# Exits non-zero on a machine without CUDA. Record the printout in docs/gpu-runs.md.
gpu-check: $(STAMP)
	mkdir -p runs
	$(PY) -m bgtutorial.gpucheck --out runs/gpu-check.json
	$(MAKE) bench

# Re-run every study the claims read (bgtutorial/claims.py) and ship the histories: resumable (run it again
# after an interruption), WORKERS runs at once (2 on the 2-core CPU; more on a GPU, which they share).
WORKERS ?= 2
studies: $(STAMP)
	$(PY) -m bgtutorial.plan --publish --workers $(WORKERS) $(STUDY_ARGS)
	$(PY) -m bgtutorial.claims

# Mutation testing, not part of CI (minutes per module): mutmut plants small bugs in metrics, stats, graph,
# batchformer, bgformer and losses, one module at a time against the test files that name it, and counts
# those the tests catch. mutmut is installed here only, not among the dependencies. Scores and survivors:
# docs/testing.md; work files in .mutation/ (git-ignored). `MODULES="metrics stats"` runs some of them.
mutation: $(STAMP)
	$(PIP) mutmut==3.8.1
	$(PY) tools/mutation.py $(MODULES)

# Execute every notebook in full mode on this machine (the CPU default without a GPU, CUB-200 where a
# GPU and the data are there) and commit the outputs: readers on GitHub and Colab see them.
notebooks: $(STAMP)
	$(PY) -m bgtutorial.nbtools execute notebooks/*.ipynb

check-notebooks: $(STAMP)
	$(PY) -m bgtutorial.nbtools check notebooks/*.ipynb

strip: $(STAMP)
	$(PY) -m bgtutorial.nbtools strip notebooks/*.ipynb

clean:
	rm -rf $(VENV) runs
