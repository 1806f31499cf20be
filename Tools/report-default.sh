#!/usr/bin/env bash
# Measures the embedded default model (judge accuracy of teacher / ArcFlow / linear on the fixed
# prompt set, paired error to the teacher, seconds per image) and splices the table into the
# README between the default-report markers. Never run by CI.
#
#   bash Tools/report-default.sh                 # 192 prompts per category, seed 0, out/report
#   PROMPTS=32 THREADS=1 bash Tools/report-default.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/report}
PROMPTS=${PROMPTS:-192}
SEED=${SEED:-0}
THREADS=${THREADS:-$(nproc)}
swift build -c release --product arcflow
.build/release/arcflow report-default -o "$OUT" --prompts "$PROMPTS" --seed "$SEED" --threads "$THREADS"
# Replace what lies between the markers (kept) by report.md, atomically.
begin='<!-- default-report:begin -->'
end='<!-- default-report:end -->'
grep -qF "$begin" README.md && grep -qF "$end" README.md || { echo "README.md has no $begin / $end markers" >&2; exit 1; }
tmp=$(mktemp README.md.XXXXXX)
awk -v b="$begin" -v e="$end" -v f="$OUT/report.md" '
  $0 == b { print; while ((getline line < f) > 0) print line; skip = 1; next }
  $0 == e { skip = 0 }
  !skip { print }' README.md > "$tmp"
mv "$tmp" README.md
echo "README.md: report table updated from $OUT/report.md"
