#!/usr/bin/env bash
# Coverage-guided fuzzing of the native OTLP decoder (collector/_otlp_native.c) with libFuzzer,
# AddressSanitizer and UBSan: builds fuzz/fuzz_otlp.c once per entry point (spans: trace
# exports, usage: log exports) and fuzzes each for SECONDS (default 30) from the seed corpus in
# fuzz/corpus/<entry>. A crash, a sanitizer report or a Python exception fails the run, and
# libFuzzer leaves the input in build/fuzz/crash-*: add it to fuzz/regressions/<entry>/ and
# to tests/collector/test_fuzz_native.py, then fix the C.
#
#   bash fuzz/run.sh [SECONDS]          # needs clang (apt-get install -y clang)
#   bash fuzz/run.sh --replay           # only run the corpus and regressions (no fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
out=build/fuzz
mkdir -p "$out"
py() { uv run --no-sync python -c "$1"; }
include=$(py 'import sysconfig; print(sysconfig.get_paths()["include"])')
libdir=$(py 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
ldver=$(py 'import sysconfig; print(sysconfig.get_config_var("LDVERSION"))')
export FUZZ_SITE=$(py 'import site; print(site.getsitepackages()[0])')
export FUZZ_ROOT="$PWD"
# Python's own allocator would hide the decoder's buffers from ASan; Python itself leaks at
# exit by design (LeakSanitizer would report it, not the decoder).
export PYTHONMALLOC=malloc
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
for entry in spans usage; do
  [ "$entry" = spans ] && id=0 || id=1
  bin="$out/fuzz_$entry"
  if [ ! -x "$bin" ] || [ "$bin" -ot fuzz/fuzz_otlp.c ] || [ "$bin" -ot collector/_otlp_native.c ]; then
    clang -g -O1 -std=c11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
      -DFUZZ_ENTRY="$id" -I"$include" fuzz/fuzz_otlp.c -L"$libdir" -lpython"$ldver" \
      -Wl,-rpath,"$libdir" -o "$bin"
  fi
  work="$out/corpus-$entry"
  mkdir -p "$work" "fuzz/regressions/$entry"
  if [ "$seconds" = --replay ]; then
    "$bin" -runs=0 "fuzz/corpus/$entry" "fuzz/regressions/$entry"
  else
    echo "== fuzzing $entry for ${seconds}s"
    "$bin" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$out/" "$work" "fuzz/corpus/$entry" \
      "fuzz/regressions/$entry"
  fi
done
