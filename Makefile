# The two README commands are `make run` and `make test`; both install what they need first
# (scripts/setup_env.sh is idempotent and reuses an existing .build/ or $COMFYUI_PATH).
PY      := .build/venv/bin/python
HOST    ?= 127.0.0.1
PORT    ?= 8188
COMFY   := $(or $(COMFYUI_PATH),$(CURDIR)/.build/ComfyUI)

.PHONY: setup run serve test test-fast browser-deps bench clean

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

clean:
	rm -rf output .pytest_cache
