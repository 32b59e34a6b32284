# syntax=docker/dockerfile:1
# The chatlog image: a Rust builder stage (cmake and a C toolchain build the bundled librdkafka
# and zlib), then a slim Debian runtime with two binaries, run as a non-root user:
# `chatlog-consumer` (the entrypoint) and the operator tool `chatlog` (doctor, migrate, inspect,
# verify, dlq, load, config), which reads the same config file, environment and flags.
#
#   docker build -t chatlog-consumer:latest .
#   docker run --rm chatlog-consumer:latest --help
#   docker run --rm --entrypoint chatlog chatlog-consumer:latest --help
#   docker run --rm --network <compose network> -e CHATLOG_CONSUMER_CONFIG=/etc/chatlog/consumer.toml \
#     -v ./deploy/consumer/chatlog-consumer.toml:/etc/chatlog/consumer.toml:ro \
#     -e CHATLOG_CQL_USERNAME=cassandra -e CHATLOG_CQL_PASSWORD -e CHATLOG_REDIS_PASSWORD \
#     --entrypoint chatlog chatlog-consumer:latest doctor
#   (in the compose deployment: `docker compose run --rm doctor`)
#
# The CQL migrations are compiled into both binaries (`chatlog-consumer migrate`, `chatlog migrate`).

ARG RUST_VERSION=1.88
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target folder between builds; the binaries are copied
# out of the cached target folder because cache mounts are not part of the image. One cargo
# invocation builds both, so the shared dependencies compile once.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chatlog-consumer -p chatlog-admin \
 && install -D -m 0755 target/release/chatlog-consumer /out/chatlog-consumer \
 && install -D -m 0755 target/release/chatlog /out/chatlog

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 chatlog \
 && useradd --system --uid 10001 --gid chatlog --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin chatlog
COPY --from=builder /out/chatlog-consumer /out/chatlog /usr/local/bin/
COPY consumer/chatlog-consumer.example.toml /etc/chatlog/chatlog-consumer.example.toml
USER 10001:10001
ENV CHATLOG_HTTP_LISTEN=0.0.0.0:9464 \
    CHATLOG_LOG_FORMAT=json \
    CHATLOG_LOG=info
EXPOSE 9464
# SIGTERM finishes and commits the current batch, then exits 0 (exit 3: fenced; restart it).
# `chatlog load --forever` also stops on SIGTERM, after its summary.
STOPSIGNAL SIGTERM
# The operator tool: `--entrypoint chatlog` (exit 0 fine, 1 a problem found, 2 bad config/usage).
ENTRYPOINT ["/usr/local/bin/chatlog-consumer"]
CMD ["run"]
