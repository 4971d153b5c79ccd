# Minimal image with static binaries, same entrypoint names as upstream:
# /proxy-server, /proxy-agent (and /konnectivity, the operator CLI).
#   docker build -t konnectivity-rs .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --profile dist --target x86_64-unknown-linux-musl \
      --bin proxy-server --bin proxy-agent --bin konnectivity

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/dist/proxy-server /proxy-server
COPY --from=build /src/target/x86_64-unknown-linux-musl/dist/proxy-agent /proxy-agent
COPY --from=build /src/target/x86_64-unknown-linux-musl/dist/konnectivity /konnectivity
USER 65534:65534
ENTRYPOINT ["/proxy-server"]
