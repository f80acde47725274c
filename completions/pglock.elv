
use builtin;
use str;

set edit:completion:arg-completer[pglock] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'pglock'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'pglock'= {
            cand -k 'Name of the lock; any UTF-8 string of 1 to 1024 bytes'
            cand --key 'Name of the lock; any UTF-8 string of 1 to 1024 bytes'
            cand --lock-id 'A raw lock id instead of a key: one signed 64-bit integer, or A,B (two signed 32-bit)'
            cand -c 'Run STRING with /bin/sh -c instead of a COMMAND after --'
            cand --command 'Run STRING with /bin/sh -c instead of a COMMAND after --'
            cand -w 'Wait at most this long for the lock (30, 0.5, 500ms, 10m, 1h30m); 0 means --nowait'
            cand --timeout 'Wait at most this long for the lock (30, 0.5, 500ms, 10m, 1h30m); 0 means --nowait'
            cand -E 'Exit status when the lock was not obtained'
            cand --conflict-exit-code 'Exit status when the lock was not obtained'
            cand --limit 'At most N holders at once (a counting semaphore of N slots); every user of a key must pass the same N. The command gets its slot in PGLOCK_SLOT'
            cand --key-hash 'How --key becomes a lock id: pglock''s own SHA-256 formula, or the one sqlx or Python''s postgres-lock uses, to share a lock with an application built on them'
            cand --max-runtime 'Stop the command when it has run this long, counted from its first start, retries and their delays included: SIGTERM to its process group, SIGKILL after --kill-after; pglock exits 124 once it has exited, and only then releases the lock'
            cand --retries 'When the command exits non-zero by itself, run it again, still holding the lock, up to N more times (0 to 100). The command gets PGLOCK_ATTEMPT (1, 2, ...); pglock exits with the last attempt''s status'
            cand --retry-delay 'The pause before the first retry; it doubles for each next one, with up to 20% random jitter either way. The lock stays held and checked meanwhile'
            cand --splay 'Before connecting, wait a random time between 0 and DURATION, so that a fleet started by the same clock does not reach the server in the same millisecond'
            cand --min-hold 'Keep the lock at least this long after it was acquired, even if the command ends sooner, so hosts whose clocks differ a little do not run the same job twice'
            cand --scope 'Lock scope: a session-level lock, or a transaction-level lock inside BEGIN ... COMMIT'
            cand --once-per 'Run at most once per DURATION across every host: once the lock is granted, skip the command if a run of this lock succeeded within DURATION, by the server''s clock. Implies --record'
            cand --max-attempts 'With --once-per: when N runs failed within DURATION, do not run again; exit with the conflict status'
            cand --done-exit-code 'With --once-per: the exit status when the job already succeeded within DURATION'
            cand --ledger 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public'
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --check-interval 'How often to ask the server whether the lock is still held while the command runs'
            cand --on-lost 'What to do when the lock is lost while the command runs'
            cand --leftovers 'What to do with processes the command leaves running when it exits (`cmd &`, a double-forked helper): stop them before the release, wait for them, or release anyway'
            cand --kill-after 'After terminating the command (lost lock), send SIGKILL if it is still running this long'
            cand --lease 'How long the server keeps the lock of a holder that went silent (a lost host, a pulled cable) [default: 2 x --check-interval + --kill-after + 2s; 0: none]'
            cand --connect-timeout 'Bound on each connection attempt [default: 10s, or connect_timeout / PGCONNECT_TIMEOUT]'
            cand --retry-connect 'Keep retrying the first connection, with backoff, for up to this long before giving up'
            cand --ping 'Report the run to a monitor that speaks healthchecks.io''s ping protocol: URL/start when the command starts, URL/STATUS with pglock''s exit status when the run ends'
            cand --ping-timeout 'How long the end ping may take in all, retries included (1s after a terminating signal)'
            cand -n 'Do not wait: if the lock is busy, exit with the conflict status at once'
            cand --nowait 'Do not wait: if the lock is busy, exit with the conflict status at once'
            cand -s 'Take a shared lock: shared holders coexist, an exclusive holder excludes them all'
            cand --shared 'Take a shared lock: shared holders coexist, an exclusive holder excludes them all'
            cand --supersede 'Only the newest waits: a newer --supersede (or --replace) run of the lock makes this one stop waiting and exit with the conflict status, and this one does the same to older ones. Newer means it began waiting later, by the server''s clock'
            cand --replace 'The newest wins outright (implies --supersede): also stop the running command of a holder that was itself started with --replace (SIGTERM, SIGKILL after its --kill-after); this run starts once that command has exited'
            cand --fencing-token 'Give the command PGLOCK_FENCING_TOKEN: a number that grows from each holder of the lock (of each slot, with --limit) to the next, also across crashes and failovers of the server, so that storage can reject the writes of a holder that lost the lock'
            cand --record 'Record the run in the ledger table: a row before the command starts, its end before the lock is released. The command gets PGLOCK_RUN_ID and PGLOCK_LAST_SUCCESS. A run that finds an earlier one still running (the server ended its holder''s session) first waits until that command must have stopped: the lock-delay'
            cand --record-command 'Store the command line in the ledger''s command column too (it may carry secrets)'
            cand --capture 'Pass the command''s stdout and stderr through pglock, keeping their last 10 KiB for the --ping report. The command''s output is then a pipe, not a terminal'
            cand --quiet-on-success 'Print the command''s output only if the run fails (any non-zero exit status of pglock), as chronic does: for cron, which mails whatever a job prints. Implies --capture; the output waits in an unlinked temporary file'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -q 'Print nothing when the lock is busy'
            cand --quiet 'Print nothing when the lock is busy'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand status 'Show who holds a lock and who waits for it; exit 0 if held, 3 if free'
            cand list 'List every advisory lock in the current database, holders and waiters'
            cand key 'Print a key''s lock id, where pg_locks shows it, and a SQL query that finds it. Needs no server'
            cand init 'Create the run ledger table (for --record and --once-per) and its indexes. Safe to run again, and from several hosts at once'
            cand history 'Show recorded runs, newest first'
            cand check 'A monitoring plugin (Nagios, Icinga, Sensu): is a key''s last success recent enough?'
            cand metrics 'Print the Prometheus text format for every key in the ledger'
            cand prune 'Delete old runs in batches, keeping each key''s and each lock''s newest run and newest success'
            cand doctor 'Check that this host''s setup is safe for the runs you describe: the connection, a pooler in the path, the lease, connection limits, the ledger, the clock. Takes no lock and writes nothing; exit 0 if all is well, 1 for a warning, 2 for a failure'
        }
        &'pglock;status'= {
            cand -k 'Name of the lock, as given to pglock --key'
            cand --key 'Name of the lock, as given to pglock --key'
            cand --lock-id 'A raw lock id: one signed 64-bit integer, or A,B (two signed 32-bit)'
            cand --key-hash 'How KEY becomes a lock id, as in the main command'
            cand --limit 'The --limit its users pass, for a semaphore: count its N slots. Without it every slot that can exist is read, and N comes from the holders'' application_names'
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --json 'Print one JSON object instead of a table'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'pglock;list'= {
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --json 'Print a JSON array with one object per pg_locks row instead of a table'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'pglock;key'= {
            cand --lock-id 'A raw lock id instead: one signed 64-bit integer, or A,B (two signed 32-bit)'
            cand --key-hash 'How KEY becomes a lock id, as in the main command'
            cand --limit 'Also print the ids of the N slots and the queue that --limit N uses'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'pglock;init'= {
            cand --grant 'Grant ROLE what a runner needs: SELECT, INSERT and UPDATE of the end columns (no DELETE), and USAGE on the schema. ROLE is taken literally, case and all. Repeatable'
            cand --ledger 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public'
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --print 'Only print the SQL, for a DBA to apply; connect to nothing'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'pglock;history'= {
            cand -k 'The runs of this key'
            cand --key 'The runs of this key'
            cand --lock-id 'The runs of this raw lock id (recorded as lock-id:ID)'
            cand --since 'Only runs started within DURATION, by the server''s clock'
            cand --last 'At most N runs [default: 20, or all with --since]'
            cand --ledger 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public'
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --all 'The runs of every key'
            cand --json 'Print a JSON array instead of a table'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'pglock;check'= {
            cand -k 'Name of the lock, as given to pglock --key'
            cand --key 'Name of the lock, as given to pglock --key'
            cand --lock-id 'A raw lock id: one signed 64-bit integer, or A,B (two signed 32-bit)'
            cand --critical 'CRITICAL when the last success is older than this (or there is none)'
            cand --warning 'WARNING when the last success is older than this; below --critical'
            cand --ledger 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public'
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'pglock;metrics'= {
            cand --output 'Write to FILE instead of standard output: atomically (a temporary file, then rename) for node_exporter''s textfile collector, to a symlink''s target if FILE is one; a FIFO or a device is written in place'
            cand --ledger 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public'
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'pglock;prune'= {
            cand --older-than 'Delete runs that started longer ago than DURATION'
            cand --ledger 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public'
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --dry-run 'Only count what would be deleted'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'pglock;doctor'= {
            cand -k 'The lock the runs will take, as given to pglock --key (optional: named in the report)'
            cand --key 'The lock the runs will take, as given to pglock --key (optional: named in the report)'
            cand --lock-id 'A raw lock id instead of a key'
            cand --key-hash 'How KEY becomes a lock id, as in the main command'
            cand --scope 'The scope the runs will use: a session lock through a transaction pooler is unsafe'
            cand --once-per 'The runs use --once-per (implies --record): check the ledger table'
            cand --ledger 'The ledger table to check'
            cand --limit 'The runs'' --limit (a semaphore takes one connection per holder and waiter)'
            cand --check-interval 'The runs'' --check-interval, for the lease they produce'
            cand --kill-after 'The runs'' --kill-after, for the lease they produce'
            cand --lease 'The runs'' --lease (0: none)'
            cand --fleet 'How many hosts will run pglock against this server at once, to judge the connection limits'
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --record 'The runs record themselves: check the ledger table'
            cand --json 'Print one JSON object instead of lines'
            cand -v 'Log each step to stderr with a timestamp'
            cand --verbose 'Log each step to stderr with a timestamp'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
    ]
    $completions[$command]
}
