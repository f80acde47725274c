#!/usr/bin/env bash
# What --capture costs: SIZE (default 1 GiB) of output pushed through `pglock --capture` and
# through `cat`, each into /dev/null, with the wall time ratio and pglock's peak RSS (the tail
# must keep it bounded whatever the command prints). Issue 25 asks for at most 1.5x cat's time
# and under 20 MiB.
#
#   bench/capture.sh              build pglock (cargo build --release) and measure
#   PGLOCK=/path/to/pglock bench/capture.sh
#
# Starts its own throw-away PostgreSQL (pg_virtualenv -t). Knobs: SIZE_MIB (1024), ROUNDS (3).
# Needs GNU time (/usr/bin/time) for the RSS. Installs nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" != --inside ]; then
    for tool in pg_virtualenv /usr/bin/time head; do
        command -v "$tool" >/dev/null || { echo "capture.sh: needs $tool" >&2; exit 2; }
    done
    if [ -z "${PGLOCK:-}" ]; then
        (cd "$here/.." && cargo build --release --quiet)
        PGLOCK="$here/../target/release/pglock"
        [ -n "${CARGO_TARGET_DIR:-}" ] && PGLOCK="$CARGO_TARGET_DIR/release/pglock"
    fi
    export PGLOCK
    exec pg_virtualenv -t "$0" --inside
fi

size=$(( ${SIZE_MIB:-1024} * 1024 * 1024 ))
rounds=${ROUNDS:-3}
# The same producer for both: the output is made by the command, not by the pipe.
producer="head -c $size /dev/zero"

# Prints "wall_s cpu_s maxrss_kib" for one run of "$@" with stdout to /dev/null. CPU time (user
# + system, the command's included) is the steadier number on a shared machine.
measure() {
    { /usr/bin/time -f '%e %U %S %M' "$@" >/dev/null; } 2>&1 | tail -1 |
        awk '{ printf "%s %.2f %s\n", $1, $2 + $3, $4 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

echo "| round | cat s | pglock --capture s | wall ratio | CPU ratio | pglock max RSS MiB |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
for r in $(seq "$rounds"); do
    read -r cat_s cat_cpu _ < <(measure sh -c "$producer | cat")
    read -r pg_s pg_cpu pg_kib < <(measure "$PGLOCK" --key bench-capture --capture -c "$producer")
    echo "| $r | $cat_s | $pg_s | $(ratio "$pg_s" "$cat_s") | $(ratio "$pg_cpu" "$cat_cpu") |" \
        "$((pg_kib / 1024)) |"
done
