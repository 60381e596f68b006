# strait-node in a container: built from the workspace, run as a non-root user on
# Debian slim. Build from the repository root:
#   docker build -f deploy/docker/node.Dockerfile -t strait-node .
FROM rust:1.95-slim-bookworm AS build
# etcd-client compiles its protos (protoc and the include files); jemalloc needs make.
# Unpinned on purpose: the slim base is pinned, and its point releases carry fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p strait-node --bin strait-node \
 && install -m 0755 target/release/strait-node /strait-node

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
COPY --from=build /strait-node /usr/local/bin/strait-node
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/strait-node"]
CMD ["--config", "/etc/strait/node.toml"]
