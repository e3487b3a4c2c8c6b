#!/usr/bin/env bash
# The whole test suite (scripts/test.sh) with the wall clock of the tests moved
# ahead, by libfaketime, to check that no test or code path depends on today's
# date (issue #16). Monotonic clocks stay real, so timeouts still work.
#   ./scripts/test-a-year-ahead.sh            # a year (365 days) ahead
#   APPWARDEN_CLOCK_AHEAD=+730d ./scripts/test-a-year-ahead.sh
set -euo pipefail
cd "$(dirname "$0")/.."

AHEAD="${APPWARDEN_CLOCK_AHEAD:-+365d}"
LIBFAKETIME=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
if [ ! -f "$LIBFAKETIME" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing libfaketime (moves the wall clock of the tests)"
    apt-get update -qq && apt-get install -y -qq libfaketime >/dev/null
  else
    echo "error: $LIBFAKETIME not found; install the libfaketime package" >&2
    exit 1
  fi
fi

# librdkafka's timers wait through C11 cnd_timedwait, which libfaketime does not
# convert; this small preload routes it through pthread_cond_timedwait, which it does.
SHIM_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/appwarden/target}/faketime"
mkdir -p "$SHIM_DIR"
cc -shared -fPIC -O2 -o "$SHIM_DIR/c11_timedwait.so" scripts/faketime/c11_timedwait.c -lpthread

# Only the test processes (and what they start: the daemon, tansu, the SMTP
# server) run ahead: cargo and rustc keep the real clock, so the build cache
# shared with scripts/test.sh keeps real file times.
cat > "$SHIM_DIR/run-ahead" <<RUNNER
#!/bin/sh
export LD_PRELOAD="$SHIM_DIR/c11_timedwait.so $LIBFAKETIME"
export FAKETIME="$AHEAD"
export FAKETIME_DONT_FAKE_MONOTONIC=1
exec "\$@"
RUNNER
chmod +x "$SHIM_DIR/run-ahead"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$SHIM_DIR/run-ahead"
echo "== the tests' wall clock reads $("$SHIM_DIR/run-ahead" date -u +%FT%TZ) ($AHEAD)"
exec ./scripts/test.sh
