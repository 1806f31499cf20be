#!/usr/bin/env bash
# The test command: set-up if needed, release build (the interpreter oracle is slow in debug),
# then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Tools/setup.sh
swift build -c release
swift test -c release "$@"
