# The coordinator image: a static-ish Rust binary on a slim Debian, no libtorch (the
# coordinator never touches a model). Built with the `s3` feature so artifacts can live in
# object storage (--store s3://bucket/prefix with AWS_* variables).
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t tessera-coordinator .
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Only the coordinator and the CLI are built: the worker crate (libtorch) is never compiled here.
RUN cargo build --release --locked -p tessera-coordinator -p tessera-cli --features tessera-coordinator/s3

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tessera --create-home tessera
COPY --from=build /src/target/release/tessera-coordinator /usr/local/bin/
COPY --from=build /src/target/release/tessera /usr/local/bin/
USER tessera
WORKDIR /var/lib/tessera
# gRPC (tessera.v1 and grpc.health.v1) and Prometheus /metrics.
EXPOSE 7470 9464
ENV TESSERA_LISTEN=0.0.0.0:7470 \
    TESSERA_METRICS_LISTEN=0.0.0.0:9464 \
    TESSERA_LOG_FORMAT=json
ENTRYPOINT ["tessera-coordinator"]
