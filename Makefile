# Two commands do all the set-up on a fresh Debian machine with Python 3.11:
#   make demo   - create .venv; on the bundled hippocampus volume with 3 labeled slices, print
#                 the Dice of 'fill between slices', of the propagation (both no training) and
#                 of 2 minutes of the default method (masks in out/)
#   make test   - install system + test dependencies, run ruff and the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SEMISEG := $(VENV)/bin/semiseg
DEMO_METHOD ?= supervised
DEMO_MINUTES ?= 2
DEMO_SLICES ?= 10,16,22
EXAMPLE := examples/data/hippocampus_003
SYSTEM_PACKAGES := xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-cursor0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libdbus-1-3 libfontconfig1

.PHONY: demo test venv system-deps lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first, so nothing resolves a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

system-deps:
	@if ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libxkbcommon-x11; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

# The demo's own outputs (out/demo_*) are replaced on every run; nothing else is touched.
# The user's situation: 3 labeled slices (a sparse label file made from the ground truth),
# then what they get without training, and after DEMO_MINUTES of the default method.
demo: venv
	rm -rf out/demo_interpolation out/demo_propagation out/demo_run out/demo_prediction*.nii.gz
	mkdir -p out
	$(PY) -c "import nibabel as n, numpy as np; t = n.load('$(EXAMPLE)_labels.nii.gz'); \
		d = np.asarray(t.dataobj); s = np.zeros_like(d); k = [$(DEMO_SLICES)]; s[k] = d[k]; \
		n.save(n.Nifti1Image(s, t.affine, t.header), 'out/demo_sparse_labels.nii.gz')"
	$(SEMISEG) train --method interpolate --image $(EXAMPLE)_image.nii.gz \
		--labels out/demo_sparse_labels.nii.gz --out out/demo_interpolation
	$(SEMISEG) train --method propagate --image $(EXAMPLE)_image.nii.gz \
		--labels out/demo_sparse_labels.nii.gz --out out/demo_propagation
	$(SEMISEG) train --image $(EXAMPLE)_image.nii.gz --labels out/demo_sparse_labels.nii.gz \
		--method $(DEMO_METHOD) --minutes $(DEMO_MINUTES) --patch 64 --batch-size 8 \
		--out out/demo_run
	$(SEMISEG) predict --model out/demo_run --image $(EXAMPLE)_image.nii.gz \
		--labels out/demo_sparse_labels.nii.gz --out out/demo_prediction.nii.gz \
		--maps confidence
	@echo; echo "== 'fill between slices' (shape-based interpolation, no training), unlabeled slices:"
	@$(SEMISEG) evaluate --pred out/demo_interpolation/demo_sparse_labels_interpolation.nii.gz \
		--truth $(EXAMPLE)_labels.nii.gz --exclude-slices $(DEMO_SLICES) 2>/dev/null
	@echo; echo "== propagation along the image (random walker, no training), same slices scored:"
	@$(SEMISEG) evaluate --pred out/demo_propagation/demo_sparse_labels_propagation.nii.gz \
		--truth $(EXAMPLE)_labels.nii.gz --exclude-slices $(DEMO_SLICES) 2>/dev/null
	@echo; echo "== $(DEMO_METHOD) after $(DEMO_MINUTES) min of training (fused with the propagation), same slices scored:"
	@$(SEMISEG) evaluate --pred out/demo_prediction.nii.gz --truth $(EXAMPLE)_labels.nii.gz \
		--exclude-slices $(DEMO_SLICES) 2>/dev/null

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The suite runs twice: on this CPU's own oneDNN kernels, then the core and CLI tests (not
# tests/plugin) with the AVX2 kernels forced, so an AVX-512 machine also proves the AVX2-only
# path (oneDNN once crashed natively there: src_models/networks/layers.py).
test: venv system-deps lint
	xvfb-run -a $(PY) -m pytest -q -p no:cacheprovider --durations=15
	ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -p no:cacheprovider --ignore=tests/plugin tests

bench: venv
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/accuracy.py --method supervised

clean:
	rm -rf $(VENV) out build *.egg-info
