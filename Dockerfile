# syntax=docker/dockerfile:1
# Build: a static-enough release binary (links only libc: SQLite is bundled, no libpq/OpenSSL).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin instachatico-auth \
 && strip target/release/instachatico-auth

# Run: non-root, production mode (keys must be provided), gRPC + grpc-web on 50051, and the
# Envoy sidecar's socket in /run/instachatico (share it as a volume; see compose.yaml).
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/instachatico-auth auth \
 && install -d -o auth -m 0700 /run/instachatico
COPY --from=build /src/target/release/instachatico-auth /usr/local/bin/instachatico-auth
# Swagger UI for Envoy's /docs on Kubernetes, where it is too big for a ConfigMap: the pod's init
# container copies it to Envoy (deploy/kubernetes/deployment.yaml).
COPY envoy/swagger-ui/ /usr/share/instachatico-auth/swagger-ui/
USER auth
WORKDIR /var/lib/instachatico-auth
ENV HOST=0.0.0.0 \
    PORT=50051 \
    APP_ENV=production \
    DATA_DIR=/var/lib/instachatico-auth/data \
    PROXY_SOCKET=/run/instachatico/proxy.sock \
    LOG_FORMAT=json
EXPOSE 50051
STOPSIGNAL SIGTERM
ENTRYPOINT ["instachatico-auth"]
CMD ["serve"]
