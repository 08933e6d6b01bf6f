# The CUDA worker image. libtorch comes from PyPI's torch wheel, exactly as scripts/setup.sh
# installs it (tch 0.24 needs libtorch 2.11.0): the wheel's torch/ directory is libtorch, and
# the worker's build script bakes its lib/ path into the binary's rpath.
#
#   docker build -f deploy/docker/worker.Dockerfile -t tessera-worker .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_VERSION=2.11.0

FROM ${CUDA_IMAGE} AS base
ARG TORCH_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*
# The default torch wheel on Linux x86_64 is the CUDA build; its nvidia-* dependencies bring
# the CUDA libraries libtorch_cuda links against.
RUN python3 -m venv /opt/torch \
    && /opt/torch/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && ln -s "$(/opt/torch/bin/python -c 'import importlib.util,os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')" /opt/libtorch

FROM base AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        curl build-essential pkg-config protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.88
ENV PATH=/root/.cargo/bin:$PATH \
    LIBTORCH=/opt/libtorch
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tessera-worker --features cuda

FROM base
COPY --from=build /src/target/release/tessera-worker /usr/local/bin/
RUN useradd --system --uid 10001 --home-dir /var/lib/tessera --create-home tessera
USER tessera
WORKDIR /var/lib/tessera
# Prometheus /metrics.
EXPOSE 9464
ENV TESSERA_METRICS_LISTEN=0.0.0.0:9464 \
    TESSERA_LOG_FORMAT=json \
    TESSERA_MODELS=/models
ENTRYPOINT ["tessera-worker"]
