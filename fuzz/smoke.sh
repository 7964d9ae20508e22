#!/usr/bin/env bash
# Fuzz smoke run on the stable toolchain: build every target with coverage
# instrumentation (no sanitizer), then run each for SECONDS (default 30) from the
# committed seeds. Exits non-zero on the first crash; the input is left in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${1:-30}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the coverage flags away from build scripts and proc macros.
cargo build --release --target-dir target/cov --target "$triple"
for target in $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^weft-fuzz$'); do
  mkdir -p "corpus/$target" "artifacts/$target"
  if [ -d "seeds/$target" ]; then cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true; fi
  echo "fuzz smoke: $target for ${seconds}s"
  # pipefail: the fuzzer's exit status, not tail's, decides.
  if ! "target/cov/$triple/release/$target" "corpus/$target" -max_total_time="$seconds" \
    -max_len=4096 -artifact_prefix="artifacts/$target/" -print_final_stats=1 2>&1 | tail -n 20; then
    echo "fuzz smoke: $target FAILED (input in fuzz/artifacts/$target/)"
    exit 1
  fi
done
echo "fuzz smoke: all targets ok"
