# syntax=docker/dockerfile:1
# The chatlog-consumer image: a Rust builder stage (cmake and a C toolchain build the bundled
# librdkafka and zlib), then a slim Debian runtime with the binary alone, run as a non-root user.
#
#   docker build -t chatlog-consumer:latest .
#   docker run --rm chatlog-consumer:latest --help
#
# The CQL migrations are compiled into the binary (`chatlog-consumer migrate`).

ARG RUST_VERSION=1.88
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target folder between builds; the binary is copied out
# of the cached target folder because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chatlog-consumer --bin chatlog-consumer \
 && install -D -m 0755 target/release/chatlog-consumer /out/chatlog-consumer

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 chatlog \
 && useradd --system --uid 10001 --gid chatlog --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin chatlog
COPY --from=builder /out/chatlog-consumer /usr/local/bin/chatlog-consumer
COPY consumer/chatlog-consumer.example.toml /etc/chatlog/chatlog-consumer.example.toml
USER 10001:10001
ENV CHATLOG_HTTP_LISTEN=0.0.0.0:9464 \
    CHATLOG_LOG_FORMAT=json \
    CHATLOG_LOG=info
EXPOSE 9464
# SIGTERM finishes and commits the current batch, then exits 0 (exit 3: fenced; restart it).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chatlog-consumer"]
CMD ["run"]
