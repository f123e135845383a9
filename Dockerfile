# wsfleet: build with the Rust toolchain, run from a small Debian base as a non-root user.
FROM rust:1.88-slim-bookworm AS build
# make: jemalloc (the allocator) is built from source.
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY .cargo ./.cargo
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# tungstenite, patched (Cargo.toml's [patch.crates-io]; vendor/tungstenite/Cargo.toml says why).
COPY vendor ./vendor
RUN cargo build --release --locked --bin wsfleet

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin wsfleet
COPY --from=build /src/target/release/wsfleet /usr/local/bin/wsfleet
USER 10001
# 9750: wsfleet's control API and /metrics; 9001: the reference target.
EXPOSE 9750 9001
ENTRYPOINT ["wsfleet"]
CMD ["run"]
