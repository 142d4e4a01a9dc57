# Shadow's three programs in one image: shadow-master, shadow-nodeproxy, shadow-edgeproxy.
# contrib/compose.yaml builds it and picks the program with `command:`.
#
#   docker build -t shadow:dev .
#   docker run --rm shadow:dev shadow-master --help
#
# Plain Dockerfile syntax (no BuildKit cache mounts) so it builds with the classic builder and
# docker-compose v1 too; the price is a full dependency build when any source file changes.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- build: the three binaries, release profile, exactly the locked dependency versions ---
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p shadow-master -p shadow-nodeproxy -p shadow-edgeproxy \
 && install -D -m 0755 -t /out \
      target/release/shadow-master target/release/shadow-nodeproxy target/release/shadow-edgeproxy

# --- runtime: the same Debian as the builder (same glibc), CA certificates and the binaries ---
FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/shadow --create-home \
      --shell /usr/sbin/nologin shadowd \
 && install -d -o shadowd -g shadowd -m 0700 /var/lib/shadow/data
COPY --from=build /out/ /usr/local/bin/
# The node proxy talks to the Docker socket, which needs root (or the socket's group) in the
# container; compose runs that one service as root. The master and the edge need nothing of it.
USER shadowd
WORKDIR /var/lib/shadow
# Owned by `shadowd` in the image, so a named volume mounted here starts out writable by it.
ENV SHADOW_DATA_DIR=/var/lib/shadow/data
# master, node proxy, edge proxy
EXPOSE 7070 7071 8080
CMD ["shadow-master"]
