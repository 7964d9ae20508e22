#!/usr/bin/env bash
# A fuzzing campaign on the stable toolchain: every target in turn for an equal share
# of TOTAL_MINUTES (default 60), from the kept corpus (fuzz/corpus/<target>/, seeded
# from fuzz/seeds/), then the corpus minimized in place (libFuzzer's -merge=1). Prints
# one line per target (runs, execs/s, coverage, corpus size, crashes) and writes them
# to fuzz/campaign.txt. Exits non-zero if any target crashed; the input is left in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
total_minutes="${1:-60}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target-dir target/cov --target "$triple"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^weft-fuzz$')
n=$(echo "$targets" | wc -l)
seconds=$(( total_minutes * 60 / n ))
report=campaign.txt
printf '%-18s %8s %12s %8s %7s %8s %7s\n' target seconds execs execs/s cov corpus crashes | tee "$report"
failed=0
for target in $targets; do
  bin="target/cov/$triple/release/$target"
  mkdir -p "corpus/$target" "artifacts/$target"
  if [ -d "seeds/$target" ]; then cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true; fi
  log=$(mktemp)
  crashes=0
  if ! "$bin" "corpus/$target" -max_total_time="$seconds" -max_len=4096 \
      -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$log" 2>&1; then
    crashes=1
    failed=1
    tail -n 30 "$log"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | sed 's/cov: //')
  # Minimize: keep only inputs that add coverage.
  min=$(mktemp -d)
  "$bin" -merge=1 -max_len=4096 "$min" "corpus/$target" >/dev/null 2>&1 || true
  if [ -n "$(ls -A "$min")" ]; then
    rm -rf "corpus/$target"
    mv "$min" "corpus/$target"
  else
    rm -rf "$min"
  fi
  size=$(ls "corpus/$target" | wc -l)
  printf '%-18s %8s %12s %8s %7s %8s %7s\n' "$target" "$seconds" "${execs:-?}" "${rate:-?}" \
    "${cov:-?}" "$size" "$crashes" | tee -a "$report"
  rm -f "$log"
done
exit "$failed"
