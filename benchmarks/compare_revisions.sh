#!/usr/bin/env bash
# Before/after CPU benchmark in one run: `process` at 1280x720 (benchmarks/bench_process.py)
# for an earlier revision and for the working tree, one after the other on this machine.
#
#   benchmarks/compare_revisions.sh REV [SECONDS]
#
# The earlier revision is checked out into a temporary git worktree and imported from
# there (PYTHONPATH), with the same virtual environment. Tables go to
# benchmarks/results/compare_<rev>/.
set -euo pipefail
REV=${1:?usage: benchmarks/compare_revisions.sh REV [SECONDS]}
SECONDS_CLIP=${2:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
SHORT=$(git -C "$ROOT" rev-parse --short "$REV")
OUT=$ROOT/benchmarks/results/compare_$SHORT
WT=$(mktemp -d)
trap 'git -C "$ROOT" worktree remove --force "$WT" >/dev/null 2>&1 || true' EXIT
git -C "$ROOT" worktree add --detach "$WT" "$REV" >/dev/null
mkdir -p "$OUT"
echo "== before: $SHORT"
(cd "$WT" && PYTHONPATH="$WT" "$PY" benchmarks/bench_process.py --seconds "$SECONDS_CLIP" --out "$OUT/before")
echo "== after: working tree $(git -C "$ROOT" rev-parse --short HEAD)"
(cd "$ROOT" && PYTHONPATH="$ROOT" "$PY" benchmarks/bench_process.py --seconds "$SECONDS_CLIP" --out "$OUT/after")
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
b = json.loads(next((out / "before").glob("*.json")).read_text())
a = json.loads(next((out / "after").glob("*.json")).read_text())
lines = ["| revision | livedeid fps | naive fps | ratio |", "|---|---:|---:|---:|",
         f"| before | {b['livedeid']['fps']:.1f} | {b['naive']['fps']:.1f} | {b['ratio']:.2f} |",
         f"| after | {a['livedeid']['fps']:.1f} | {a['naive']['fps']:.1f} | {a['ratio']:.2f} |",
         "", f"after / before (livedeid fps): {a['livedeid']['fps'] / b['livedeid']['fps']:.3f}"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
