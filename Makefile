# The two README commands are `make run` and `make test`; both install what they need first
# (scripts/setup_env.sh is idempotent and reuses an existing .build/ or $COMFYUI_PATH).
PY      := .build/venv/bin/python
HOST    ?= 127.0.0.1
PORT    ?= 8188
COMFY   := $(or $(COMFYUI_PATH),$(CURDIR)/.build/ComfyUI)

.PHONY: setup run serve test test-fast browser-deps bench train-stage-one train-prior train-prior-wide train-fast clean

setup:
	scripts/setup_env.sh

# Main job: a ComfyUI graph (workflows/api/main.json) run in-process on the bundled sample clip.
run: setup
	$(PY) scripts/run_main.py

serve: setup
	cd "$(COMFY)" && "$(CURDIR)/$(PY)" main.py --listen $(HOST) --port $(PORT) $(SERVE_ARGS)

# Hook for the browser tests' system dependencies (Chromium + chromedriver).
browser-deps:
	scripts/install_browser.sh

test: setup browser-deps
	scripts/run_tests.sh $(PYTEST_ARGS)

# Without the browser dependencies (the browser tests then skip or fail on their own terms).
test-fast: setup
	scripts/run_tests.sh $(PYTEST_ARGS)

# Every bench writes its figures into docs/bench/; the README / model-card tables are then filled from them.
bench: setup
	@set -e; for f in bench/*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(PY) "$$f"; done
	$(PY) scripts/fill_readme.py

# Stage-one training (docs/MODEL_CARD.md), step-based and resumable from the checkpoints committed in docs/training/;
# stop any time (TRAIN_ARGS="--time-limit 3600" or "--stop-at N"): the schedule does not depend on where it stops.
# train-stage-one: the default 'quality' mode, the unrolled non-blind solver trained end to end on real-footage blur
# with estimated trajectories (the last run, finished and not shipped: docs/training/deblur_longline, the shipped solver fine-tuned on long
# blur, three quarters of it along straight paths; its recipe.txt is shared with bench/gpu_session.sh). train-fast: the 'fast' mode's
# CPFP lite network.
STAGE_ONE_RUN := docs/training/deblur_longline
train-stage-one: setup
	$(PY) -m cpgd_core.train deblur $$(cat $(STAGE_ONE_RUN)/recipe.txt) --resume --out $(STAGE_ONE_RUN) $(TRAIN_ARGS)

# Priors: pre-trained as denoisers before they enter the solver; both runs were stopped at step 9500 of their
# 20000-step schedules. The wide one has 4x the parameters, mostly at 1/4 and 1/8 resolution (1.5x the time of the
# shipped one at 720p: 0.58 s against 0.38 s per call on 2 cores).
train-prior: setup
	$(PY) -m cpgd_core.train prior --out docs/training/prior_denoiser --steps 20000 --resume $(TRAIN_ARGS)

train-prior-wide: setup
	$(PY) -m cpgd_core.train prior --out docs/training/prior_wide --channels 32,80,160 --blocks 1,2,4 --steps 20000 \
	    --resume $(TRAIN_ARGS)

FAST_RUN := docs/training/cpfp_lite_real
train-fast: setup
	$(PY) -m cpgd_core.train make-val --data real --out .devdata/val_real_128.pt --seed 0 --count 16 --crop 128 --frames 5
	$(PY) -m cpgd_core.train cpfp --config lite --init docs/training/cpfp_lite_synth.safetensors --data mix \
	    --steps 12000 --batch 4 --crop 128 --frames 5 --crops-per-clip 2 --workers 1 --lr 2e-4 --warmup 50 \
	    --sharp-share 0.2 --amp --val .devdata/val_real_128.pt --val-every 500 --ckpt-every 100 --log-every 50 --seed 5 --resume \
	    --out $(FAST_RUN) $(TRAIN_ARGS)

clean:
	rm -rf output .pytest_cache
