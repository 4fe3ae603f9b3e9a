#!/usr/bin/env bash
# Makes sure the local servers the tests talk to are up (PostgreSQL on
# 127.0.0.1:5432 with the `test` database, RabbitMQ on 127.0.0.1:5672 with
# guest/guest), installing and starting them with the machine's own service
# commands when they are not.
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

rabbit_up() { rabbitmqctl -q await_startup >/dev/null 2>&1 && rabbitmqctl -q status >/dev/null 2>&1; }

if ! command -v rabbitmqctl >/dev/null 2>&1; then
    echo "==> installing RabbitMQ"
    apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    echo "==> starting RabbitMQ"
    rabbitmq-server -detached || true
    for _ in $(seq 1 60); do rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
fi
# A test may have stopped the broker's application (fault tolerance) and
# died before restarting it: start_app is a no-op when it runs.
rabbitmqctl -q start_app >/dev/null 2>&1 || true
if ! rabbit_up; then
    echo "error: RabbitMQ is not reachable on 127.0.0.1:5672" >&2
    exit 1
fi

# The alert tests run a real SMTP server (aiosmtpd, with STARTTLS) and make
# its certificates with openssl.
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
    echo "==> installing aiosmtpd"
    python3 -m pip install --quiet --disable-pip-version-check aiosmtpd
fi
if ! command -v openssl >/dev/null 2>&1; then
    echo "==> installing openssl"
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

# The REST fuzz test (tests/e2e/api_fuzz.rs) runs schemathesis against the
# gateway's OpenAPI document; it lives in a virtual environment of its own
# (the path the test looks in), pinned so that a run is repeatable.
SCHEMATHESIS_VERSION=4.32.5
schemathesis_venv="$HOME/.cache/trustmesh-schemathesis"
if ! "$schemathesis_venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "==> installing schemathesis $SCHEMATHESIS_VERSION"
    python3 -m venv "$schemathesis_venv"
    "$schemathesis_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
