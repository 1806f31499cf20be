#!/usr/bin/env bash
# The test command: set-up if needed, then a release build (the interpreter oracle is slow in
# debug) and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Tools/setup.sh
# The generated C of the model suites is built at -O1 (gcc -O3 on hundreds of small models was
# most of the suite's time; every parity tolerance holds at both levels); the kernel tests build
# theirs at -O3, as `arcflow compile` does. ARCFLOW_CC_OPT set by the caller wins.
export ARCFLOW_CC_OPT="${ARCFLOW_CC_OPT:--O1}"
# `swift test` builds every module and executable the tests need, with testable imports; a
# `swift build -c release` before it compiled each module a second time, without them.
swift test -c release "$@"
