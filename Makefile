# Everything installs from here: CI runs `make test` on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo check-install constraints clean

# pyproject states the ranges we support; constraints.txt the exact versions CI tests (`make constraints`).
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned: the CPU build lies on disk; an open range would pull a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[dev,sweep,slurm]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

# The main job on the embedded default (synthetic data + SmolLM2's pretrained weights, built on first use):
# train (one epoch: no streaming validation to pick an epoch by, eval.py streams the val split next; no
# teacher-forced test either, eval.py streams the test split and scores the replies after restarts teacher-forced), then
# evaluate the checkpoint by streaming the test split at every setting in bf16 (thresholds calibrated on 3 val
# clips at `none`, applied to every setting: the speaking threshold of eval.yaml's grid, DST's at 0.5, whose head
# is sharp; the 40 streams of the test split, 10 clips x 4 settings, in one batch), and export it (docs/export.md)
# with those thresholds.
DEMO := outputs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)
demo: $(STAMP)
	$(BIN)/python train.py +experiment=perframe hydra.run.dir=$(DEMO)/train test=false \
		callbacks.streaming_validation.num_clips=0 callbacks.model_checkpoint.monitor=val/speaking_auroc
	ckpt=$$($(BIN)/python -c "import json; print(json.load(open('$(DEMO)/train/metrics.json'))['checkpoint'])") && \
	$(BIN)/python eval.py hydra.run.dir=$(DEMO)/eval ckpt_path=$$ckpt stream.dtype=bfloat16 stream.batch_size=40 \
		calibration.num_clips=3 calibration.from_none=true 'calibration.dst_update=[0.5]' && \
	$(BIN)/python -m prospect.export $$ckpt $(DEMO)/model --calibration $(DEMO)/eval/calibration.json

# The package alone (no extras) in a fresh venv, as a user installs it beside other tools: every job module
# imports, and `python -m prospect.data` synthesizes and validates clips (a missing dependency fails here).
CHECK_VENV ?= /tmp/prospect-check-install
check-install:
	rm -rf $(CHECK_VENV) && $(PY) -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/pip install -q torch==2.13.0
	$(CHECK_VENV)/bin/pip install -q .
	cd $(CHECK_VENV) && bin/python -c "import prospect.train, prospect.evaluate, prospect.export, prospect.stream.demo" \
		&& bin/python -m prospect.data synth --out data --videos 2 --image-size 32 \
		&& bin/python -m prospect.data validate data/train.jsonl data/val.jsonl data/test.jsonl
	rm -rf $(CHECK_VENV)

# Renew constraints.txt after a range in pyproject moves: what a fresh install resolves today (torch aside,
# pinned above), for CI to test.
LOCK_VENV ?= /tmp/prospect-constraints
constraints:
	rm -rf $(LOCK_VENV) && $(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q torch==2.13.0
	$(LOCK_VENV)/bin/pip install -q '.[dev,sweep,slurm]'
	$(LOCK_VENV)/bin/pip freeze | grep -v -e '^torch==' -e '^prospect' > constraints.txt
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV)
