#!/usr/bin/env bash
# pglock's cost next to the least any PostgreSQL-based lock can cost. See BENCHMARKS.md.
#
#   bench/run.sh                  build pglock (cargo build --release) and measure everything
#   PGLOCK=/path/to/pglock bench/run.sh    measure that binary instead
#
# It starts its own throw-away PostgreSQL cluster (pg_virtualenv -t), measures every section in
# one run so the ratios hold on a noisy machine, prints Markdown tables, and keeps the raw samples
# in $OUT (default: a new directory under /tmp). Installs nothing.
#
# Knobs (environment): ROUNDS (5) and RUNS (20): hyperfine runs per command per round, rounds
# interleave the commands; FLOOR_SECS (2): pgbench -C time per round; SECTION (0.02): seconds a
# critical section lasts in the hand-off test; SCALE (200): waiters in the scale test;
# FLEET (1000), FLEET_CAP (20) and FLEET_MODES ("none tuned role pool"): waiters, the
# connection cap, and the modes of the fleet test (pool needs pgbouncer); SECTIONS ("uncontended
# ledger token handoff memory scale fleet"): which sections to run; MODES ("default disable"): which
# connection settings the ledger, hand-off, memory and scale sections use; PGLOCK_ALT (unset)
# and ALT_NAME ("alternative build"): a second pglock binary that the uncontended and memory
# sections measure next to the first, such as a `--features vendored` build; PAIRS (200): pairs
# of runs per row in the token section.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

if [ "${1:-}" != --inside ]; then
    missing=()
    for tool in hyperfine pg_virtualenv pgbench psql flock awk; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "bench/run.sh: missing ${missing[*]}" >&2
        echo "  Debian/Ubuntu: apt-get install hyperfine postgresql postgresql-contrib util-linux" >&2
        exit 1
    fi
    if [ "${BASH_VERSINFO[0]}" -lt 5 ]; then
        echo "bench/run.sh: needs bash 5 (for \$EPOCHREALTIME)" >&2
        exit 1
    fi
    if [ -z "${PGLOCK:-}" ]; then
        (cd "$here/.." && cargo build --release --quiet)
        PGLOCK="$here/../target/release/pglock"
    fi
    PGLOCK=$(realpath "$PGLOCK")
    export PGLOCK
    if [ -n "${PGLOCK_ALT:-}" ]; then
        PGLOCK_ALT=$(realpath "$PGLOCK_ALT")
        export PGLOCK_ALT
    fi
    OUT=${OUT:-$(mktemp -d -t pglock-bench.XXXXXX)}
    mkdir -p "$OUT"
    export OUT
    # pg_createcluster takes the first free port from 5432 up, which races with other
    # pg_virtualenv runs on the same machine; a random high port does not.
    for attempt in 1 2 3; do
        port=$((20000 + RANDOM % 10000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
        [ -e "/var/run/postgresql/.s.PGSQL.$port" ] && continue
        # The waiters, their holder, and the script's own psql need more than the default 100.
        max=$((${FLEET:-1000} + 100))
        [ "$max" -ge 300 ] || max=300
        if PGPORT=$port pg_virtualenv -t -o max_connections=$max "$0" --inside; then
            exit 0
        fi
        rc=$?
        # The cluster ran and the benchmark itself failed: don't run it again.
        [ -e "$OUT/started" ] && exit "$rc"
        echo "bench/run.sh: pg_virtualenv failed (attempt $attempt); trying another port" >&2
    done
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# Inside the throw-away cluster: PGHOST=localhost, PGPORT, PGUSER, PGPASSWORD, PGDATABASE are set.
touch "$OUT/started"
ROUNDS=${ROUNDS:-5}
RUNS=${RUNS:-20}
FLOOR_SECS=${FLOOR_SECS:-2}
SECTION=${SECTION:-0.02}
SCALE=${SCALE:-200}
FLEET=${FLEET:-1000}
FLEET_CAP=${FLEET_CAP:-20}
samples="$OUT/uncontended.txt"
: >"$samples"
results="$OUT/results.md"
: >"$results"
lockfile="$OUT/flock.lock"

say() { echo "$*" | tee -a "$results"; }
sql() { PGSSLMODE=disable psql -X -q -At -c "$1"; }

# The connection settings every section is measured with:
# - default: nothing set, so libpq and pglock both use sslmode=prefer and negotiate TLS;
# - disable: PGSSLMODE=disable for every tool.
use_mode() {
    unset PGSSLMODE
    case $1 in
        disable) export PGSSLMODE=disable ;;
    esac
}
mode_name() {
    case $1 in
        default) echo "prefer (default)" ;;
        disable) echo "disable" ;;
    esac
}

# The median of the numbers on stdin, and nearest-rank percentiles.
pct() { # pct P: the P-th percentile (0-100) of the numbers on stdin
    sort -g | awk -v p="$1" '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        i = int(p / 100 * NR); if (i < p / 100 * NR) i++; if (i < 1) i = 1
        printf "%.2f\n", v[i] }'
}
median() { pct 50; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a / b }'; }

# hyperfine's JSON lists each run's wall time in seconds under "times".
hyperfine_times() {
    awk '/"times": \[/ { on = 1; next } on && /\]/ { on = 0 } on { gsub(/[ ,]/, ""); print $0 * 1000 }' "$1"
}

# One measured command: RUNS runs (after 3 warm-ups), appended to the samples as milliseconds.
measure() { # measure MODE LABEL COMMAND...
    local mode=$1 label=$2 json="$OUT/hf.json"
    shift 2
    hyperfine -N --style none -w 3 -r "$RUNS" --export-json "$json" -- "$(printf '%q ' "$@")"
    hyperfine_times "$json" | sed "s/^/$mode $label /" >>"$samples"
}

# The floor: pgbench -C with a two-statement script, one client. Each transaction opens a new
# connection, so the time between two transaction ends is connect + lock + unlock + disconnect.
floor() { # floor MODE
    local dir
    dir=$(mktemp -d -p "$OUT")
    printf 'SELECT pg_advisory_lock(4242);\nSELECT pg_advisory_unlock(4242);\n' >"$dir/lock.sql"
    (cd "$dir" && pgbench -n -C -c 1 -T "$FLOOR_SECS" -l -f lock.sql >pgbench.out 2>&1)
    awk -v m="$1" 'NR > 1 { print m, "floor", (($5 - s) * 1e6 + ($6 - u)) / 1000 } { s = $5; u = $6 }' \
        "$dir"/pgbench_log.* >>"$samples"
    rm -rf "$dir"
}

value() { # value MODE LABEL: the median in ms
    awk -v m="$1" -v l="$2" '$1 == m && $2 == l { print $3 }' "$samples" | median
}

count() {
    awk -v m="$1" -v l="$2" '$1 == m && $2 == l' "$samples" | wc -l
}

# ---------------------------------------------------------------------------------------------
machine() {
    say "## Machine"
    say ""
    say "- CPU: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores"
    say "- Memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    say "- Kernel: $(uname -sr)"
    say "- Server: PostgreSQL $(sql 'SHOW server_version'), TCP loopback (PGHOST=$PGHOST), ssl=$(sql 'SHOW ssl'), password_encryption=$(sql 'SHOW password_encryption')"
    say "- pglock: $("$PGLOCK" --version) ($(git -C "$here" describe --always --dirty 2>/dev/null || echo unknown)), $PGLOCK"
    [ -z "${PGLOCK_ALT:-}" ] || say "- pglock, ${ALT_NAME:-alternative build}: $PGLOCK_ALT"
    say "- Tools: $(hyperfine --version), $(pgbench --version), $(flock --version | head -1)"
    say "- Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    say ""
}

uncontended() {
    local mode round psqlbin
    psqlbin="$("${PG_CONFIG:-pg_config}" --bindir 2>/dev/null)/psql"
    [ -x "$psqlbin" ] || psqlbin=
    for round in $(seq "$ROUNDS"); do
        for mode in default disable; do
            (
                use_mode "$mode"
                floor "$mode"
                measure "$mode" psql psql -X -c 'SELECT pg_advisory_lock(4243)'
                [ -z "$psqlbin" ] || measure "$mode" psql-bin "$psqlbin" -X -c 'SELECT pg_advisory_lock(4243)'
                measure "$mode" pglock "$PGLOCK" --key bench-uncontended -- true
                [ -z "${PGLOCK_ALT:-}" ] || measure "$mode" pglock-alt "$PGLOCK_ALT" --key bench-uncontended -- true
                measure "$mode" flock flock "$lockfile" true
            )
        done
    done

    say "## Uncontended"
    say ""
    say "Median wall time of one run; ratios to the floor and to psql with the same sslmode,"
    say "from the same run: $ROUNDS rounds of $RUNS runs per command after 3 warm-up runs"
    say "(pgbench: ${FLOOR_SECS} s per round), the rounds interleaving the commands."
    say ""
    say "| command | sslmode | median ms | x floor | x psql | runs |"
    say "| --- | --- | ---: | ---: | ---: | ---: |"
    local fl ps label name v
    for mode in default disable; do
        fl=$(value "$mode" floor)
        ps=$(value "$mode" psql)
        for label in floor psql psql-bin pglock pglock-alt flock; do
            [ "$(count "$mode" "$label")" -gt 0 ] || continue
            case $label in
                floor) name="pgbench -C, lock + unlock: **the floor**" ;;
                psql) name="psql -c 'SELECT pg_advisory_lock(..)'" ;;
                psql-bin) name="the same, psql binary without Debian's pg_wrapper" ;;
                pglock) name="**pglock --key k -- true**" ;;
                pglock-alt) name="the same, ${ALT_NAME:-alternative build}" ;;
                flock) name="flock /tmp/f true (no server)" ;;
            esac
            v=$(value "$mode" "$label")
            say "| $name | $(mode_name "$mode") | $v | $(ratio "$v" "$fl") | $(ratio "$v" "$ps") | $(count "$mode" "$label") |"
        done
    done
    say ""
}

# ---------------------------------------------------------------------------------------------
# The run ledger (--record, --once-per): what recording costs an uncontended run. The ledger
# table is created once; a --once-per window of 1ms has always passed by the next run (so it
# runs and records), one of 1h has not (so every run after the first skips).
ledger() {
    local round mode table=public.bench_pglock_runs
    PGSSLMODE=disable "$PGLOCK" init --ledger "$table" >/dev/null
    for round in $(seq "$ROUNDS"); do
        for mode in ${MODES:-default disable}; do
            (
                use_mode "$mode"
                measure "$mode" ledger-plain "$PGLOCK" --key bench-ledger-plain -- true
                measure "$mode" ledger-record "$PGLOCK" --key bench-ledger-record --record \
                    --ledger "$table" -- true
                measure "$mode" ledger-once-run "$PGLOCK" --key bench-ledger-once-run \
                    --once-per 1ms --ledger "$table" -- true
                measure "$mode" ledger-once-skip "$PGLOCK" --key bench-ledger-once-skip \
                    --once-per 1h --ledger "$table" -- true
                measure "$mode" ledger-xact "$PGLOCK" --key bench-ledger-xact --scope xact -- true
                measure "$mode" ledger-xact-record "$PGLOCK" --key bench-ledger-xact-record \
                    --scope xact --record --ledger "$table" -- true
            )
        done
    done

    say "## Run ledger"
    say ""
    say "Median wall time of one uncontended run, and the ratio to the same run without the"
    say "ledger (in the same scope), from the same run of this script: $ROUNDS rounds of $RUNS runs per command after"
    say "3 warm-up runs, the rounds interleaving the commands. The ledger table held"
    say "$(sql "SELECT count(*) FROM $table") rows at the end."
    say ""
    say "| command | sslmode | median ms | x plain | + ms | runs |"
    say "| --- | --- | ---: | ---: | ---: | ---: |"
    local label name v plain
    for mode in ${MODES:-default disable}; do
        for label in ledger-plain ledger-record ledger-once-run ledger-once-skip ledger-xact \
            ledger-xact-record; do
            # xact scope compares with xact scope: its ledger has a connection of its own.
            case $label in
                ledger-xact*) plain=$(value "$mode" ledger-xact) ;;
                *) plain=$(value "$mode" ledger-plain) ;;
            esac
            case $label in
                ledger-plain) name="pglock --key k -- true" ;;
                ledger-record) name="pglock --key k **--record** -- true" ;;
                ledger-once-run) name="pglock --key k **--once-per** -- true (runs)" ;;
                ledger-once-skip) name="pglock --key k **--once-per** -- true (skips)" ;;
                ledger-xact) name="pglock --key k --scope xact -- true" ;;
                ledger-xact-record) name="pglock --key k --scope xact **--record** -- true" ;;
            esac
            v=$(value "$mode" "$label")
            say "| $name | $(mode_name "$mode") | $v | $(ratio "$v" "$plain") | $(awk -v a="$v" -v b="$plain" 'BEGIN { printf "%.2f", a - b }') | $(count "$mode" "$label") |"
        done
    done
    say ""
}

# ---------------------------------------------------------------------------------------------
# --fencing-token: what reading the token with the grant costs an uncontended run, in each
# scope and with --limit, and what its SQL costs the server. The runs come in pairs, one with
# the flag and one without, in alternating order, so that the machine's drift (other load on a
# shared machine moves a round's median by milliseconds) hits both alike; the cost is the median
# of the pairs' differences. pgbench adds the server's time for the statements on one warm
# connection. With fsync on: the token's transaction id is committed, and a commit that waited
# for a WAL flush would show here.
token_pairs() { # token_pairs MODE LABEL ARGS...: PAIRS pairs, as "MODE LABEL-off|LABEL-on ms"
    local mode=$1 label=$2 i a b c first second
    shift 2
    for i in $(seq "${PAIRS:-200}"); do
        if ((i % 2)); then first=off second=on; else first=on second=off; fi
        a=$EPOCHREALTIME
        "$PGLOCK" --key bench-token "$@" $([ $first = on ] && echo --fencing-token) -- true
        b=$EPOCHREALTIME
        "$PGLOCK" --key bench-token "$@" $([ $second = on ] && echo --fencing-token) -- true
        c=$EPOCHREALTIME
        awk -v m="$mode" -v l="$label" -v f="$first" -v s="$second" -v a="$a" -v b="$b" -v c="$c" \
            'BEGIN { x = (b - a) * 1000; y = (c - b) * 1000
                     print m, l "-" f, x; print m, l "-" s, y
                     print m, l "-diff", (f == "on" ? x - y : y - x) }'
    done >>"$samples"
}

token() {
    local mode dir round script
    sql "ALTER SYSTEM SET fsync = on"
    sql "SELECT pg_reload_conf()" >/dev/null
    for mode in ${MODES:-default disable}; do
        (
            use_mode "$mode"
            token_pairs "$mode" session
            token_pairs "$mode" xact --scope xact
            token_pairs "$mode" limit --limit 3
        )
    done
    dir=$(mktemp -d -p "$OUT")
    printf 'SELECT pg_try_advisory_lock(4244);\nSELECT pg_advisory_unlock(4244);\n' >"$dir/plain.sql"
    printf '%s\n' "SELECT s.granted AS granted, CASE WHEN s.granted THEN concat_ws(' ', pg_walfile_name(pg_current_wal_lsn()), (pg_control_checkpoint()).checkpoint_lsn, txid_current()) END AS token FROM (SELECT pg_try_advisory_lock(4244) AS granted OFFSET 0) AS s;" \
        'SELECT pg_advisory_unlock(4244);' >"$dir/token.sql"
    for round in $(seq "$ROUNDS"); do
        for script in plain token; do
            (cd "$dir" && PGSSLMODE=disable pgbench -n -c 1 -T "$FLOOR_SECS" -f "$script.sql" 2>&1 |
                awk -v s="$script" '/latency average/ { print "sql", "token-sql-" s, $4 }') >>"$samples"
        done
    done
    rm -rf "$dir"

    say "## Fencing token"
    say ""
    say "One uncontended run with and without \`--fencing-token\`, server fsync=$(sql 'SHOW fsync'),"
    say "synchronous_commit=$(sql 'SHOW synchronous_commit'): ${PAIRS:-200} pairs of runs per row, the two runs"
    say "of a pair back to back in alternating order; the medians of each, and the median of the"
    say "pairs' differences. The last rows: the server's time for the lock statement and the"
    say "unlock (pgbench, one warm connection, no TLS, mean latency of each ${FLOOR_SECS}-s round,"
    say "median of $ROUNDS rounds)."
    say ""
    say "| command | sslmode | median ms without | with | + ms (median of differences) | pairs |"
    say "| --- | --- | ---: | ---: | ---: | ---: |"
    local label name
    for mode in ${MODES:-default disable}; do
        for label in session xact limit; do
            case $label in
                session) name="pglock --key k [--fencing-token] -- true" ;;
                xact) name="pglock --key k --scope xact [--fencing-token] -- true" ;;
                limit) name="pglock --key k --limit 3 [--fencing-token] -- true" ;;
            esac
            say "| $name | $(mode_name "$mode") | $(value "$mode" "$label-off") | $(value "$mode" "$label-on") | $(value "$mode" "$label-diff") | $(count "$mode" "$label-diff") |"
        done
    done
    say "| server, warm connection: try-lock [with the token] + unlock | - | $(value sql token-sql-plain) | $(value sql token-sql-token) | $(awk -v a="$(value sql token-sql-token)" -v b="$(value sql token-sql-plain)" 'BEGIN { printf "%.2f", a - b }') | - |"
    say ""
    sql "ALTER SYSTEM RESET fsync"
    sql "SELECT pg_reload_conf()" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Hand-off: K contenders each run M critical sections on one lock. Each section writes its start
# and end times; the hand-off latency is the time from one section's end to the next one's start
# (the command exits, the lock passes on, the next command starts).
handoff_run() { # handoff_run TOOL MODE K M LOG
    local tool=$1 mode=$2 k=$3 m=$4 log=$5 c
    : >"$log"
    local section='echo "s $EPOCHREALTIME" >>"$HLOG"; sleep "$HSECTION"; echo "e $EPOCHREALTIME" >>"$HLOG"'
    (
        use_mode "$mode"
        export HLOG=$log HSECTION=$SECTION
        for c in $(seq "$k"); do
            (
                for _ in $(seq "$m"); do
                    echo "l $EPOCHREALTIME" >>"$log"
                    case $tool in
                        pglock) "$PGLOCK" --key "bench-handoff-$k" -- bash -c "$section" ;;
                        flock) flock "$lockfile" bash -c "$section" ;;
                    esac
                done
            ) &
        done
        wait
    )
}

# Reads a hand-off log, checks that no two sections overlapped, and prints
# "runs runs/s launched% p50 p99". launched% counts the hand-offs for which another run had
# already been started when the section ended (so it was connecting or waiting).
handoff_stats() {
    sort -k2 -g "$1" | awk '
        $1 == "l" { launched++; next }
        $1 == "s" { if (open) bad++
                    open = 1; started++; if (started == 1) first = $2
                    if (prev_end != "") { nh++; print "h", ($2 - prev_end) * 1000; if (pending) queued++ }
                    next }
        $1 == "e" { open = 0; prev_end = $2; pending = launched - started > 0 }
        END {
            if (bad) print "bench/run.sh: " bad " critical sections overlapped" > "/dev/stderr"
            printf "runs %d %.1f %.0f%s\n", started, started / (prev_end - first),
                100 * queued / (nh ? nh : 1), bad ? " OVERLAP" : ""
        }' >"$1.stats"
    local p50 p99 runs
    p50=$(awk '$1 == "h" { print $2 }' "$1.stats" | pct 50)
    p99=$(awk '$1 == "h" { print $2 }' "$1.stats" | pct 99)
    runs=$(awk '$1 == "runs" { print $2, $3, $4 $5 }' "$1.stats")
    echo "$runs $p50 $p99"
}

handoff() {
    local shapes=("2 100" "8 25" "32 8") shape k m mode log fl_p50 runs rps queued p50 p99
    say "## Hand-off"
    say ""
    say "K contenders each run M critical sections (\`bash -c\`: a timestamp, \`sleep $SECTION\`, a"
    say "timestamp) on one lock. The hand-off is the time from one section's end to the next one's"
    say "start: the command's exit, the release, the wake-up of the next holder and the start of"
    say "its command. flock(1) runs the same shapes on a local file; its hand-off is the cost of"
    say "starting the next command with a lock that costs next to nothing, so pglock's p50 minus"
    say "flock's is pglock's own part."
    say ""
    say "| K x M | tool | sslmode | runs/s | hand-off p50 ms | p99 ms | p50 - flock p50 | next run launched |"
    say "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    for shape in "${shapes[@]}"; do
        read -r k m <<<"$shape"
        log="$OUT/handoff-flock-$k.log"
        handoff_run flock disable "$k" "$m" "$log"
        read -r runs rps queued fl_p50 p99 < <(handoff_stats "$log")
        say "| $k x $m | flock | - | $rps | $fl_p50 | $p99 | | $queued% |"
        for mode in ${MODES:-default disable}; do
            log="$OUT/handoff-pglock-$mode-$k.log"
            handoff_run pglock "$mode" "$k" "$m" "$log"
            read -r runs rps queued p50 p99 < <(handoff_stats "$log")
            say "| $k x $m | pglock | $(mode_name "$mode") | $rps | $p50 | $p99 | $(awk -v a="$p50" -v b="$fl_p50" 'BEGIN { printf "%.2f", a - b }') | $queued% |"
        done
    done
    say ""
}

# ---------------------------------------------------------------------------------------------
kib() { awk -v f="$2" '$1 == f":" { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
pss_kib() { awk '$1 == "Pss:" { print $2 }' "/proc/$1/smaps_rollup"; }

# Waits until COND (a SQL boolean) holds, up to LIMIT seconds.
wait_sql() { # wait_sql LIMIT COND
    local deadline=$((SECONDS + $1))
    until [ "$(sql "SELECT $2")" = t ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "bench/run.sh: timed out waiting for: $2" >&2
            return 1
        fi
        sleep 0.1
    done
}

advisory() { # the number of advisory locks granted (true) or waited for (false)
    echo "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted = $1)"
}

memory() {
    say "## Memory"
    say ""
    say "Peak RSS (VmHWM) of the pglock process itself (not its command): one waiting for the"
    say "lock, 1 s after it was queued, and the one holding it while its command runs. RSS counts"
    say "every page mapped, shared libraries included; PSS divides shared pages among the"
    say "processes that map them."
    say ""
    say "| process | sslmode | TLS in use | VmHWM MiB | VmRSS MiB | PSS MiB |"
    say "| --- | --- | --- | ---: | ---: | ---: |"
    local mode
    for mode in ${MODES:-default disable}; do
        (
            use_mode "$mode"
            local release="$OUT/release-mem-$mode" holder waiter alt= queued=1 psqlpid tls name
            name=$(mode_name "$mode")
            rm -f "$release"
            "$PGLOCK" --lock-id 4244 -- bash -c "while [ ! -e '$release' ]; do sleep 0.05; done" &
            holder=$!
            wait_sql 30 "$(advisory true) = 1"
            "$PGLOCK" --lock-id 4244 -- true &
            waiter=$!
            wait_sql 30 "$(advisory false) = 1"
            if [ -n "${PGLOCK_ALT:-}" ]; then
                "$PGLOCK_ALT" --lock-id 4244 -- true &
                alt=$!
                queued=2
                wait_sql 30 "$(advisory false) = 2"
            fi
            psql -X -q -c 'SELECT pg_advisory_lock(4244)' >/dev/null &
            psqlpid=$!
            wait_sql 30 "$(advisory false) = $((queued + 1))"
            sleep 1
            tls=$(sql "SELECT CASE WHEN bool_and(ssl) THEN 'yes' WHEN NOT bool_or(ssl) THEN 'no' ELSE 'mixed' END FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE application_name LIKE 'pglock:%'")
            say "| pglock, waiting | $name | $tls | $(mib "$(kib $waiter VmHWM)") | $(mib "$(kib $waiter VmRSS)") | $(mib "$(pss_kib $waiter)") |"
            [ -z "$alt" ] || say "| pglock, ${ALT_NAME:-alternative build}, waiting | $name | $tls | $(mib "$(kib $alt VmHWM)") | $(mib "$(kib $alt VmRSS)") | $(mib "$(pss_kib $alt)") |"
            say "| pglock, holding, command running | $name | $tls | $(mib "$(kib $holder VmHWM)") | $(mib "$(kib $holder VmRSS)") | $(mib "$(pss_kib $holder)") |"
            say "| psql, waiting (for comparison) | $name | | $(mib "$(kib $psqlpid VmHWM)") | $(mib "$(kib $psqlpid VmRSS)") | $(mib "$(pss_kib $psqlpid)") |"
            touch "$release"
            wait "$holder" "$waiter" $alt "$psqlpid"
        )
    done
    say ""
}

# ---------------------------------------------------------------------------------------------
scale() {
    say "## Scale"
    say ""
    say "$SCALE pglock processes wait on one key while another one holds it; then the holder lets"
    say "go and the $SCALE run \`true\` in turn. Connections are the server's sessions whose"
    say "application_name starts with pglock, holder included. RSS and PSS are summed over the"
    say "$SCALE waiters 1 s after the last one was queued."
    say ""
    say "| sslmode | waiters | server connections | total RSS MiB | total PSS MiB | RSS per waiter MiB | time to queue s | time to run through s | runs/s |"
    say "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    local mode
    for mode in ${MODES:-default disable}; do
        (
            use_mode "$mode"
            local release="$OUT/release-scale-$mode" holder pids=() i t0 t1 t2 t3 conns rss=0 pss=0
            rm -f "$release"
            "$PGLOCK" --key bench-scale -- bash -c "while [ ! -e '$release' ]; do sleep 0.05; done" &
            holder=$!
            wait_sql 30 "$(advisory true) = 1"
            t0=$EPOCHREALTIME
            for i in $(seq "$SCALE"); do
                "$PGLOCK" --key bench-scale -- true &
                pids+=($!)
            done
            wait_sql 300 "$(advisory false) = $SCALE"
            t1=$EPOCHREALTIME
            sleep 1
            conns=$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pglock%'")
            for i in "${pids[@]}"; do
                rss=$((rss + $(kib "$i" VmRSS)))
                pss=$((pss + $(pss_kib "$i")))
            done
            touch "$release"
            wait "$holder"
            t2=$EPOCHREALTIME
            for i in "${pids[@]}"; do wait "$i"; done
            t3=$EPOCHREALTIME
            say "| $(mode_name "$mode") | $SCALE | $conns | $(mib $rss) | $(mib $pss) | $(mib $((rss / SCALE))) | $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') | $(awk -v a="$t2" -v b="$t3" 'BEGIN { printf "%.2f", b - a }') | $(awk -v a="$t2" -v b="$t3" -v n="$SCALE" 'BEGIN { printf "%.0f", n / (b - a) }') |"
        )
    done
    say ""
}

# ---------------------------------------------------------------------------------------------
# Fleet: FLEET waiters on one key while a job started before them holds it, in three modes:
# nothing caps their connections; they log in as a role with CONNECTION LIMIT FLEET_CAP (the
# others wait in pglock's backoff); they connect through a session-pooling PgBouncer with
# FLEET_CAP server connections (the others wait in its queue). The holder connects directly in
# every mode. Each waiter runs bash writing two timestamps, which give the hand-offs as in the
# hand-off section.
postmaster_pid() {
    head -1 "$(sql "SELECT setting FROM pg_settings WHERE name = 'data_directory'")/postmaster.pid"
}

# The server's client backends right now, those still authenticating included.
backends() { ps --ppid "$1" -o args= | grep -c '^postgres: .*(' || true; }

# Starts a session-pooling PgBouncer in front of the server in DIR; prints its port.
start_bouncer() { # start_bouncer DIR
    local dir=$1 port
    port=$((30000 + RANDOM % 10000))
    {
        echo "[databases]"
        echo "* = host=$PGHOST port=$PGPORT user=$PGUSER password=$PGPASSWORD"
        echo "[pgbouncer]"
        echo "listen_addr = 127.0.0.1"
        echo "listen_port = $port"
        echo "unix_socket_dir ="
        echo "auth_type = trust"
        echo "auth_file = $dir/users.txt"
        echo "pool_mode = session"
        echo "default_pool_size = $FLEET_CAP"
        echo "max_client_conn = $((FLEET + 100))"
        echo "query_wait_timeout = 0"
        echo "logfile = $dir/pgbouncer.log"
        echo "pidfile = $dir/pgbouncer.pid"
    } >"$dir/pgbouncer.ini"
    echo "\"$PGUSER\" \"\"" >"$dir/users.txt"
    # One descriptor per client and per server connection.
    ulimit -n $((FLEET * 2 + 200)) 2>/dev/null || true
    if [ "$(id -u)" = 0 ]; then
        # PgBouncer refuses to run as root.
        chown -R postgres "$dir"
        runuser -u postgres -- pgbouncer -d "$dir/pgbouncer.ini" >/dev/null 2>&1
    else
        pgbouncer -d "$dir/pgbouncer.ini" >/dev/null 2>&1
    fi
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    echo "$port"
}

# The settings the script's own queries use: straight to the server, as its superuser.
direct() { PGHOST=$DIRECT_HOST PGPORT=$DIRECT_PORT PGUSER=$DIRECT_USER PGPASSWORD=$DIRECT_PASSWORD "$@"; }

fleet_mode() { # fleet_mode none|role|pool
    local mode=$1 key="bench-fleet-$1" release="$OUT/release-fleet-$1" log="$OUT/fleet-$1.log"
    local seen="$OUT/fleet-$1.backends" probes="$OUT/fleet-$1.probes" holder sampler prober
    local pids=() i t0 t1="" rss=0 pss=0 queued=$FLEET failed=0 pm dir="" v extra="" lost=no
    local runs rps launched p50 p99 drain
    rm -f "$release"
    : >"$log"
    : >"$seen"
    : >"$probes"
    pm=$(postmaster_pid)
    # A waiter without --timeout outlives a bench that fails: it would retry against the dropped
    # cluster for ever.
    trap 'kill "$holder" "${pids[@]}" 2>/dev/null || true' EXIT
    "$PGLOCK" --key "$key" -- bash -c "while [ ! -e '$release' ]; do sleep 0.05; done" &
    holder=$!
    wait_sql 30 "$(advisory true) = 1"
    case $mode in
        tuned)
            sql "CREATE ROLE bench_fleet LOGIN PASSWORD 'fleet'"
            sql "ALTER ROLE bench_fleet SET deadlock_timeout = '10min'"
            export PGUSER=bench_fleet PGPASSWORD=fleet
            ;;
        role)
            sql "CREATE ROLE bench_fleet LOGIN PASSWORD 'fleet' CONNECTION LIMIT $FLEET_CAP"
            export PGUSER=bench_fleet PGPASSWORD=fleet
            queued=$FLEET_CAP
            ;;
        pool)
            dir=$(mktemp -d -p "$OUT")
            export PGPORT
            PGPORT=$(start_bouncer "$dir")
            export PGHOST=127.0.0.1
            queued=$FLEET_CAP
            ;;
    esac
    (while :; do backends "$pm" >>"$seen"; sleep 0.1; done) &
    sampler=$!
    # What the application sharing the server sees: a new connection and a query, twice a second.
    (while :; do
        v=$EPOCHREALTIME
        direct sql 'SELECT 1' >/dev/null
        awk -v a="$v" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }' >>"$probes"
        sleep 0.5
    done) &
    prober=$!
    export HLOG=$log
    t0=$EPOCHREALTIME
    for i in $(seq "$FLEET"); do
        "$PGLOCK" --key "$key" -- bash -c 'echo "s $EPOCHREALTIME" >>"$HLOG"; echo "e $EPOCHREALTIME" >>"$HLOG"' \
            2>>"$OUT/fleet-$mode.err" &
        pids+=($!)
    done
    # Memory: 1 s after the server has as many client backends as there will be waiters in the
    # lock's queue (from ps, which needs nothing from the server), all waiters still waiting.
    (
        until [ "$(backends "$pm")" -ge "$queued" ]; do sleep 0.1; done
        sleep 1
        for i in "${pids[@]}"; do
            # A waiter and its children (its wait guard); one that already ran or gave up has
            # no memory to count.
            for c in "$i" $(cat "/proc/$i/task/$i/children" 2>/dev/null || true); do
                v=$(kib "$c" VmRSS 2>/dev/null || true)
                rss=$((rss + ${v:-0}))
                v=$(pss_kib "$c" 2>/dev/null || true)
                pss=$((pss + ${v:-0}))
            done
        done
        echo "$rss $pss" >"$OUT/fleet-$mode.memory"
    ) &
    # Settled: the server shows them queued. The job's own lock check may give up first (it is
    # answered late while the server is busy), and then the queue starts to move.
    while kill -0 "$holder" 2>/dev/null; do
        if [ "$(direct sql "SELECT $(advisory false) >= $queued")" = t ]; then
            t1=$EPOCHREALTIME
            break
        fi
        sleep 0.1
    done
    wait $!
    read -r rss pss <"$OUT/fleet-$mode.memory"
    [ -z "$dir" ] || extra=" (PgBouncer: $(mib "$(kib "$(cat "$dir/pgbouncer.pid")" VmRSS)"))"
    touch "$release"
    wait "$holder" || lost="yes (exit $?)"
    for i in "${pids[@]}"; do wait "$i" || failed=$((failed + 1)); done
    # All reaped: their ids may belong to others from now on.
    trap - EXIT
    kill "$sampler" "$prober"
    wait "$sampler" "$prober" 2>/dev/null || true
    [ -z "$dir" ] || kill "$(cat "$dir/pgbouncer.pid")"
    read -r runs rps launched p50 p99 < <(handoff_stats "$log")
    # From the first section's start to the last one's end.
    drain=$(sort -k2 -g "$log" | awk 'NR == 1 { a = $2 } { b = $2 } END { printf "%.2f", b - a }')
    [ -z "$t1" ] || t1=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    say "| $(fleet_name "$mode") | $FLEET | ${t1:--} | $drain | $(sort -n "$seen" | tail -1) | $(sort -g "$probes" | tail -1) | $(mib $pss) | $(mib $rss)$extra | $p50 | $p99 | $runs | $failed | $lost |"
}

fleet_name() {
    case $1 in
        none) echo "no cap" ;;
        tuned) echo "no cap, role with deadlock_timeout = 10min" ;;
        role) echo "role with CONNECTION LIMIT $FLEET_CAP" ;;
        pool) echo "PgBouncer session pool of $FLEET_CAP" ;;
    esac
}

fleet() {
    say "## Fleet"
    say ""
    say "$FLEET pglock processes wait on one key while a job started before them holds it; then"
    say "the job ends and the $FLEET run in turn, each a \`bash -c\` writing two timestamps."
    say "Modes: no cap; no cap, as a role whose deadlock_timeout is 10min (ALTER ROLE .. SET); the"
    say "waiters log in as a role with CONNECTION LIMIT $FLEET_CAP; they connect through a"
    say "session-pooling PgBouncer with $FLEET_CAP server connections (query_wait_timeout = 0)."
    say "sslmode=disable throughout; the job connects directly."
    say "Settled: from the first waiter's start until the server shows all of them (or the"
    say "cap's worth) queued. Drain: from the first section's start to the last one's end."
    say "Peak backends: the server's client backends, authenticating ones included, sampled every"
    say "0.1 s. Slowest probe: the longest a new psql connection with \`SELECT 1\` took, tried"
    say "twice a second throughout. Memory: summed over the waiters and their wait guards once"
    say "the server has as many client backends as will queue for the lock, plus 1 s. Hand-off:"
    say "from one section's end to the next one's start. Job lost: the job's own lock check got"
    say "no answer within its --check-interval (5 s) and it gave up."
    say ""
    say "| mode | waiters | settled s | drain s | peak backends | slowest probe s | total PSS MiB | total RSS MiB | hand-off p50 ms | p99 ms | runs | failed | job lost |"
    say "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    local mode modes="none tuned role pool"
    if ! command -v pgbouncer >/dev/null; then
        modes="none tuned role"
        echo "bench/run.sh: no pgbouncer; skipping the session pool mode" >&2
    fi
    export DIRECT_HOST=$PGHOST DIRECT_PORT=$PGPORT DIRECT_USER=$PGUSER DIRECT_PASSWORD=$PGPASSWORD
    for mode in ${FLEET_MODES:-$modes}; do
        (
            use_mode disable
            fleet_mode "$mode"
        )
        PGOPTIONS="-c client_min_messages=warning" sql "DROP ROLE IF EXISTS bench_fleet"
    done
    say ""
}

started=$SECONDS
machine
for section in ${SECTIONS:-uncontended ledger token handoff memory scale fleet}; do
    "$section"
done
say "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); $((SECONDS - started)) s in all. Raw samples: $OUT"
