# Minimal image with static binaries, same entrypoint names as upstream:
# /proxy-server, /proxy-agent (and /konnectivity, the operator CLI).
#   docker build -t konnectivity-rs .
# The binaries are glibc static-pie (scripts/build-static.sh, dist profile): with musl's
# allocator the same code moved bulk data 1.5 x slower, spent 1.4-1.8 x the CPU per GiB
# and per dial, and held 19 % more memory per tunneled connection (BENCHMARKS.md, "The
# image's C library").
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN STATIC_PROFILE=dist STATIC_TARGET_DIR=target \
      STATIC_BINS="proxy-server proxy-agent konnectivity" bash scripts/build-static.sh

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-gnu/dist/proxy-server /proxy-server
COPY --from=build /src/target/x86_64-unknown-linux-gnu/dist/proxy-agent /proxy-agent
COPY --from=build /src/target/x86_64-unknown-linux-gnu/dist/konnectivity /konnectivity
# glibc's allocator keeps the data path's chunks instead of faulting them in again
# (konnectivity_runtime::process::ALLOCATOR_TUNABLES says why; a test keeps these equal).
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=8388608
USER 65534:65534
ENTRYPOINT ["/proxy-server"]
