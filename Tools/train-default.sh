#!/usr/bin/env bash
# Reproduces the embedded default model from scratch: trains the first teacher (hours of CPU) and
# distils it into a 2-NFE ArcFlow student and the linear baseline (models/teacher-base), fine-tunes
# the patch-4 teacher models/teacher-p4 from it, and grows it into the deeper teacher that is the
# default (models/shapes), whose two students are distilled and then fine-tuned against the
# teacher's own samples (README, "The default model's teacher"). Never run by CI.
# Resumable: run it again after an interruption.
#
#   bash Tools/train-default.sh            # run folder models/shapes-run, 30000 steps (the last third annealed)
#   STEPS=60000 RUN=/tmp/run bash Tools/train-default.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-models/shapes-run}
STEPS=${STEPS:-30000}
# One thread: on cores shared with other jobs, every OpenMP barrier of a 2-thread step waits for a
# descheduled thread (measured 10× slower per step); use THREADS=2 on an idle machine.
THREADS=${THREADS:-1}

# Runs a command with its output appended to DIR/train.log (one history across resumed runs), and
# shows the log's new lines on the terminal meanwhile. The command stays in the foreground so that
# Ctrl-C reaches it (it saves its state); tail follows from the log's current end, and a stand-in
# process tells it when to stop, after printing what the command wrote last.
TAIL= SENTINEL=
logged() {
  local log="$1/train.log"; shift
  mkdir -p "$(dirname "$log")" && touch "$log"
  local from=$(( $(stat -c %s "$log") + 1 ))
  sleep infinity & SENTINEL=$!
  tail -s 0.2 -c "+$from" -f --pid="$SENTINEL" "$log" & TAIL=$!
  local rc=0
  "$@" >> "$log" 2>&1 || rc=$?
  kill "$SENTINEL" 2>/dev/null || true
  wait "$TAIL" 2>/dev/null || true
  TAIL= SENTINEL=
  return "$rc"
}
trap 'kill $TAIL $SENTINEL 2>/dev/null || true' EXIT

# Distils a teacher folder's two students, ArcFlow (K = 8) and the linear baseline (K = 1), in the
# run folders PREFIX-arcflow and PREFIX-linear, and exports them as adapters into that folder. Each
# PHASE "ITERS RHO DECAY" resumes the run up to ITERS iterations with ρ falling over RHO and the
# rate held to DECAY (a finished phase returns at once when run again); EXTRA: more options, where
# @name stands for the student's name (arcflow or linear).
distil_students() {
  local teacher="$1" prefix="$2" extra="$3"; shift 3
  local K name drun phase iters rho decay
  for K in 8 1; do
    name=$([ "$K" = 1 ] && echo linear || echo arcflow)
    drun="$prefix-$name"
    echo "== distillation of $teacher ($name, K = $K) in $drun (log: $drun/train.log; eval: $drun/eval.csv)"
    for phase in "$@"; do
      read -r iters rho decay <<< "$phase"
      # shellcheck disable=SC2086 # EXTRA is a list of options
      logged "$drun" nice -n 5 .build/release/arcflow distill-default -o "$drun" --teacher-weights "$teacher" --components "$K" \
        --iterations "$iters" --decay-iterations "$rho" --decay-start "$decay" ${extra//@name/$name} --resume --threads "$THREADS"
    done
    .build/release/arcflow distill-default -o "$drun" --export-adapter "$teacher/$name"
    tail -n 2 "$drun/eval.csv"
  done
}

swift build -c release
echo "== teacher: $STEPS steps in $RUN (log: $RUN/train.log; accuracy: $RUN/eval.csv)"
logged "$RUN" nice -n 5 .build/release/arcflow train-default -o "$RUN" --steps "$STEPS" --resume --threads "$THREADS"
# The first teacher: the EMA of the last evaluation, in f16, as the default-model folder
# models/teacher-base (transformer/, text_encoder/, model.json; the adapters arcflow/ and linear/ are
# written by the distillation next to them). It was the default until session 35.
.build/release/arcflow train-default -o "$RUN" --export-teacher models/teacher-base
tail -n 3 "$RUN/eval.csv"

# Distillation (ArcFlow K = 8, then the linear K = 1 baseline on the same recipe and budget), from
# the f16 teacher in models/teacher-base (the students are run on exactly those weights); each
# resumable in its own folder, then exported as adapters.
# The teacher ratio ρ falls from 1 to 0 over the whole run (DISTILL_RHO): with the reference's 20%
# the paired error to the teacher rose as soon as ρ reached 0 (README, "The default model's
# distillation"); the rate is held to DISTILL_DECAY, then annealed.
DISTILL_ITERS=${DISTILL_ITERS:-3000}
DISTILL_RHO=${DISTILL_RHO:-3000}
DISTILL_DECAY=${DISTILL_DECAY:-2000}
distil_students models/teacher-base "$RUN/distill" "" "$DISTILL_ITERS $DISTILL_RHO $DISTILL_DECAY"

# The patch-4 teacher (256 image tokens), warm-started from the 8×8 teacher above re-patched
# (TeacherWeights.repatched), trained at 3e-4 held to P4_DECAY, then annealed; exported in f16 as
# models/teacher-p4 (transformer/, text_encoder/, model.json), the teacher of the next students.
P4RUN="$RUN/patch4"
P4_STEPS=${P4_STEPS:-7000}
P4_DECAY=${P4_DECAY:-4500}
echo "== patch-4 teacher: $P4_STEPS steps in $P4RUN (log: $P4RUN/train.log; accuracy: $P4RUN/eval.csv)"
P4INIT=(--resume)
[ -f "$P4RUN/state.safetensors" ] || P4INIT=(--init-weights models/teacher-base --patch 4)
logged "$P4RUN" nice -n 5 .build/release/arcflow train-default -o "$P4RUN" "${P4INIT[@]}" --steps "$P4_STEPS" --lr 3e-4 --warmup 200 \
  --decay-start "$P4_DECAY" --guidance 3 --threads "$THREADS"
.build/release/arcflow train-default -o "$P4RUN" --export-teacher models/teacher-p4
tail -n 3 "$P4RUN/eval.csv"
# Its students (session 19; models/teacher-p4/arcflow and linear): 1,500 iterations, ρ over 3,000,
# the rate annealed from 1,000, LoRA on the attention projections too.
distil_students models/teacher-p4 "$P4RUN/distill" "--lora-targets mlp+attention" "1500 3000 1000"

# The deeper teacher (session 31), the default model's: the 8×8 teacher above with 4 single-stream
# blocks added, their gates shut at the start (TeacherWeights.deepened: it starts computing what
# models/teacher-base does), trained at 3e-4 held to two thirds of DEEP_STEPS, then annealed;
# exported in f16 as models/shapes (README, "The default model's teacher").
DEEPRUN="$RUN/deep"
DEEP_STEPS=${DEEP_STEPS:-14000}
echo "== deeper teacher: $DEEP_STEPS steps in $DEEPRUN (log: $DEEPRUN/train.log; accuracy: $DEEPRUN/eval.csv)"
DEEPINIT=(--resume)
[ -f "$DEEPRUN/state.safetensors" ] || DEEPINIT=(--init-weights models/teacher-base --single-blocks 4)
logged "$DEEPRUN" nice -n 5 .build/release/arcflow train-default -o "$DEEPRUN" "${DEEPINIT[@]}" --steps "$DEEP_STEPS" --lr 3e-4 \
  --warmup 300 --guidance 3 --threads "$THREADS"
.build/release/arcflow train-default -o "$DEEPRUN" --export-teacher models/shapes
tail -n 3 "$DEEPRUN/eval.csv"
# Its students (sessions 31-32; models/shapes/arcflow and linear): session 19's recipe up to
# 1,500 iterations, then resumed to 4,500 with ρ over 5,000 and the rate held to 3,500 (so the
# resume raises ρ from 0.5 to 0.7 and the rate back to 1e-4; README, "A deeper teacher").
distil_students models/shapes "$DEEPRUN/distill" "--lora-targets mlp+attention" "1500 3000 1000" "4500 5000 3500"
# Then each of them fine-tuned (session 35): LAST_ITERS more iterations from its exported adapter
# with ρ = 0, the rate held to half of them, and the loss against the guided teacher's own 28-step
# sample on the last step only (--trajectory-loss 1 --trajectory-last-step; README, "The last step
# against the teacher's own sample"), seed 1 (the shipped runs'), exported over it. Resumable like
# the stages above: the run folder keeps its own copy of the adapter it started from
# (init-adapter/), so a second pass of this script, which re-exports the students above first,
# resumes the same fine-tune and exports it again.
LAST_ITERS=${LAST_ITERS:-600}
distil_students models/shapes "$DEEPRUN/distill-last" "--lora-targets mlp+attention --init-adapter models/shapes/@name \
  --trajectory-loss 1 --trajectory-last-step --seed 1 --eval-every $((LAST_ITERS / 2))" "$LAST_ITERS 0 $((LAST_ITERS / 2))"
