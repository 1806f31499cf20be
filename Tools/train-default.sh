#!/usr/bin/env bash
# Reproduces the embedded default model from scratch: trains the teacher (hours of CPU), then
# (later) distils it. Never run by CI. Resumable: run it again after an interruption.
#
#   bash Tools/train-default.sh            # run folder models/shapes-run, 40000 steps
#   STEPS=60000 RUN=/tmp/run bash Tools/train-default.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-models/shapes-run}
STEPS=${STEPS:-40000}
# One thread: on cores shared with other jobs, every OpenMP barrier of a 2-thread step waits for a
# descheduled thread (measured 10× slower per step); use THREADS=2 on an idle machine.
THREADS=${THREADS:-1}
mkdir -p "$RUN"
swift build -c release
echo "== teacher: $STEPS steps in $RUN (log: $RUN/train.log; accuracy: $RUN/eval.csv)"
# Progress lines go to the log; tail it here so the terminal shows them too.
touch "$RUN/train.log"
tail -n 0 -f "$RUN/train.log" & TAIL=$!
trap 'kill $TAIL 2>/dev/null || true' EXIT
nice -n 5 .build/release/arcflow train-default -o "$RUN" --steps "$STEPS" --resume --threads "$THREADS" >> "$RUN/train.log" 2>&1
# The shipped teacher: the EMA of the last evaluation, in f16, as the default-model folder
# models/shapes (transformer/, text_encoder/, model.json; the adapters arcflow/ and linear/ are
# written by the distillation next to them).
.build/release/arcflow train-default -o "$RUN" --export-teacher models/shapes
tail -n 3 "$RUN/eval.csv"
echo "== distillation: ArcFlow (K = 8) → models/shapes/arcflow, linear baseline (K = 1) → models/shapes/linear"
echo "   (until they exist, 'arcflow generate --teacher' works; '--export-teacher DIR --initial-students' writes undistilled ones to try the pipeline)"
