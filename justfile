# Everyday recipes; each is also a plain command (see README).

# Run the whole mesh locally.
up:
    cargo run --release -p trustmesh -- up

# The test command CI runs.
test:
    bash scripts/test.sh

# Everything CI checks.
ci:
    bash .ci/run

# Benchmarks (figures go into the README's performance section).
bench:
    cargo build --release -p trustmesh
    cargo bench -p trustmesh-policy --bench decision
    cargo bench -p trustmesh-tests --bench grpc_loopback
    cargo bench -p trustmesh-tests --bench login
    cargo bench -p trustmesh-tests --bench audit_ingest
    cargo bench -p trustmesh-tests --bench money
    cargo run --release -p trustmesh-auth --example hash_rate

# Run the Rego tests.
policy-test:
    cargo run -p trustmesh -- policy test --dir policies
