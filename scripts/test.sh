#!/usr/bin/env bash
# Run the whole test suite against real parts: install and start the services the tests
# need, run pytest with the project's venv, and stop the services again.
# Extra arguments go to pytest, e.g. `make test ARGS="-k kafka -x"`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-rtsp.sh
bash scripts/install-deploy-tools.sh
bash scripts/kafka.sh start --fresh
trap 'bash scripts/kafka.sh stop' EXIT

export VISTREAM_KAFKA_BOOTSTRAP="127.0.0.1:${VISTREAM_KAFKA_PORT:-19092}"
.venv/bin/python -m pytest "$@"
