#!/usr/bin/env bash
# Makes sure the local servers the tests talk to are up (PostgreSQL on
# 127.0.0.1:5432 with the `test` database), starting them with the machine's
# own service commands when they are not. Installs nothing it cannot find.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1; then
    echo "==> installing the PostgreSQL client and server"
    apt-get update -qq && apt-get install -y -qq postgresql postgresql-client >/dev/null
fi
if ! pg_up; then
    echo "==> starting PostgreSQL"
    for version in $(ls /etc/postgresql 2>/dev/null); do
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if ! pg_up; then
    echo "error: PostgreSQL is not reachable on 127.0.0.1:5432" >&2
    exit 1
fi
