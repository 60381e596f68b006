# strait-coordinator in a container: built from the workspace, run as a non-root user on
# Debian slim. Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t strait-coordinator .
FROM rust:1.95-slim-bookworm AS build
# etcd-client compiles its protos (protoc and the include files); jemalloc needs make.
# Unpinned on purpose: the slim base is pinned, and its point releases carry fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p strait-coordinator --bin strait-coordinator \
 && install -m 0755 target/release/strait-coordinator /strait-coordinator

FROM debian:bookworm-slim
# CA roots for the upstream API (the node also carries its own webpki roots).
# Unpinned on purpose: the slim base is pinned, and its point releases carry fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin strait \
 && mkdir -p /etc/strait /var/lib/strait \
 && chown strait:strait /var/lib/strait
COPY --from=build /strait-coordinator /usr/local/bin/strait-coordinator
USER 10001:10001
EXPOSE 7070 53/udp 53/tcp
ENTRYPOINT ["/usr/local/bin/strait-coordinator"]
CMD ["serve", "--config", "/etc/strait/coordinator.toml"]
