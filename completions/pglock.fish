# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pglock_global_optspecs
    string join \n k/key= lock-id= c/command= n/nowait w/timeout= E/conflict-exit-code= s/shared supersede replace limit= key-hash= max-runtime= retries= retry-delay= splay= min-hold= scope= fencing-token record record-command once-per= max-attempts= done-exit-code= ledger= d/database-url= check-interval= on-lost= leftovers= kill-after= lease= connect-timeout= retry-connect= ping= ping-timeout= capture quiet-on-success v/verbose q/quiet h/help V/version
end

function __fish_pglock_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pglock_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pglock_using_subcommand
    set -l cmd (__fish_pglock_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pglock -n "__fish_pglock_needs_command" -s k -l key -d 'Name of the lock; any UTF-8 string of 1 to 1024 bytes' -r
complete -c pglock -n "__fish_pglock_needs_command" -l lock-id -d 'A raw lock id instead of a key: one signed 64-bit integer, or A,B (two signed 32-bit)' -r
complete -c pglock -n "__fish_pglock_needs_command" -s c -l command -d 'Run STRING with /bin/sh -c instead of a COMMAND after --' -r
complete -c pglock -n "__fish_pglock_needs_command" -s w -l timeout -d 'Wait at most this long for the lock (30, 0.5, 500ms, 10m, 1h30m); 0 means --nowait' -r
complete -c pglock -n "__fish_pglock_needs_command" -s E -l conflict-exit-code -d 'Exit status when the lock was not obtained' -r
complete -c pglock -n "__fish_pglock_needs_command" -l limit -d 'At most N holders at once (a counting semaphore of N slots); every user of a key must pass the same N. The command gets its slot in PGLOCK_SLOT' -r
complete -c pglock -n "__fish_pglock_needs_command" -l key-hash -d 'How --key becomes a lock id: pglock\'s own SHA-256 formula, or the one sqlx or Python\'s postgres-lock uses, to share a lock with an application built on them' -r -f -a "sha256\t'First 8 bytes of SHA-256(key), big-endian, signed'
sqlx\t'sqlx\'s PgAdvisoryLock::new: HKDF-SHA256 (no salt), 8 bytes, little-endian, signed'
postgres-lock\t'Python postgres-lock: SHA-1 of the key as a decimal integer, its first 18 digits'"
complete -c pglock -n "__fish_pglock_needs_command" -l max-runtime -d 'Stop the command when it has run this long, counted from its first start, retries and their delays included: SIGTERM to its process group, SIGKILL after --kill-after; pglock exits 124 once it has exited, and only then releases the lock' -r
complete -c pglock -n "__fish_pglock_needs_command" -l retries -d 'When the command exits non-zero by itself, run it again, still holding the lock, up to N more times (0 to 100). The command gets PGLOCK_ATTEMPT (1, 2, ...); pglock exits with the last attempt\'s status' -r
complete -c pglock -n "__fish_pglock_needs_command" -l retry-delay -d 'The pause before the first retry; it doubles for each next one, with up to 20% random jitter either way. The lock stays held and checked meanwhile' -r
complete -c pglock -n "__fish_pglock_needs_command" -l splay -d 'Before connecting, wait a random time between 0 and DURATION, so that a fleet started by the same clock does not reach the server in the same millisecond' -r
complete -c pglock -n "__fish_pglock_needs_command" -l min-hold -d 'Keep the lock at least this long after it was acquired, even if the command ends sooner, so hosts whose clocks differ a little do not run the same job twice' -r
complete -c pglock -n "__fish_pglock_needs_command" -l scope -d 'Lock scope: a session-level lock, or a transaction-level lock inside BEGIN ... COMMIT' -r -f -a "session\t'pg_advisory_lock, released with pg_advisory_unlock'
xact\t'pg_advisory_xact_lock inside a transaction, released by COMMIT or ROLLBACK'"
complete -c pglock -n "__fish_pglock_needs_command" -l once-per -d 'Run at most once per DURATION across every host: once the lock is granted, skip the command if a run of this lock succeeded within DURATION, by the server\'s clock. Implies --record' -r
complete -c pglock -n "__fish_pglock_needs_command" -l max-attempts -d 'With --once-per: when N runs failed within DURATION, do not run again; exit with the conflict status' -r
complete -c pglock -n "__fish_pglock_needs_command" -l done-exit-code -d 'With --once-per: the exit status when the job already succeeded within DURATION' -r
complete -c pglock -n "__fish_pglock_needs_command" -l ledger -d 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public' -r
complete -c pglock -n "__fish_pglock_needs_command" -s d -l database-url -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql' -r
complete -c pglock -n "__fish_pglock_needs_command" -l check-interval -d 'How often to ask the server whether the lock is still held while the command runs' -r
complete -c pglock -n "__fish_pglock_needs_command" -l on-lost -d 'What to do when the lock is lost while the command runs' -r -f -a "terminate\t'Log, SIGTERM the command\'s process group, SIGKILL after --kill-after, exit 74'
ignore\t'Log a warning and let the command finish; exit with its status'"
complete -c pglock -n "__fish_pglock_needs_command" -l leftovers -d 'What to do with processes the command leaves running when it exits (`cmd &`, a double-forked helper): stop them before the release, wait for them, or release anyway' -r -f -a "terminate\t'SIGTERM them, SIGKILL after --kill-after, warn once; release when they are gone'
wait\t'Hold the lock until they exit by themselves, as flock(1) does'
keep\t'Release the lock while they run, as `flock -o` (a job that starts a daemon on purpose)'"
complete -c pglock -n "__fish_pglock_needs_command" -l kill-after -d 'After terminating the command (lost lock), send SIGKILL if it is still running this long' -r
complete -c pglock -n "__fish_pglock_needs_command" -l lease -d 'How long the server keeps the lock of a holder that went silent (a lost host, a pulled cable) [default: 2 x --check-interval + --kill-after + 2s; 0: none]' -r
complete -c pglock -n "__fish_pglock_needs_command" -l connect-timeout -d 'Bound on each connection attempt [default: 10s, or connect_timeout / PGCONNECT_TIMEOUT]' -r
complete -c pglock -n "__fish_pglock_needs_command" -l retry-connect -d 'Keep retrying the first connection, with backoff, for up to this long before giving up' -r
complete -c pglock -n "__fish_pglock_needs_command" -l ping -d 'Report the run to a monitor that speaks healthchecks.io\'s ping protocol: URL/start when the command starts, URL/STATUS with pglock\'s exit status when the run ends' -r
complete -c pglock -n "__fish_pglock_needs_command" -l ping-timeout -d 'How long the end ping may take in all, retries included (1s after a terminating signal)' -r
complete -c pglock -n "__fish_pglock_needs_command" -s n -l nowait -d 'Do not wait: if the lock is busy, exit with the conflict status at once'
complete -c pglock -n "__fish_pglock_needs_command" -s s -l shared -d 'Take a shared lock: shared holders coexist, an exclusive holder excludes them all'
complete -c pglock -n "__fish_pglock_needs_command" -l supersede -d 'Only the newest waits: a newer --supersede (or --replace) run of the lock makes this one stop waiting and exit with the conflict status, and this one does the same to older ones. Newer means it began waiting later, by the server\'s clock'
complete -c pglock -n "__fish_pglock_needs_command" -l replace -d 'The newest wins outright (implies --supersede): also stop the running command of a holder that was itself started with --replace (SIGTERM, SIGKILL after its --kill-after); this run starts once that command has exited'
complete -c pglock -n "__fish_pglock_needs_command" -l fencing-token -d 'Give the command PGLOCK_FENCING_TOKEN: a number that grows from each holder of the lock (of each slot, with --limit) to the next, also across crashes and failovers of the server, so that storage can reject the writes of a holder that lost the lock'
complete -c pglock -n "__fish_pglock_needs_command" -l record -d 'Record the run in the ledger table: a row before the command starts, its end before the lock is released. The command gets PGLOCK_RUN_ID and PGLOCK_LAST_SUCCESS. A run that finds an earlier one still running (the server ended its holder\'s session) first waits until that command must have stopped: the lock-delay'
complete -c pglock -n "__fish_pglock_needs_command" -l record-command -d 'Store the command line in the ledger\'s command column too (it may carry secrets)'
complete -c pglock -n "__fish_pglock_needs_command" -l capture -d 'Pass the command\'s stdout and stderr through pglock, keeping their last 10 KiB for the --ping report. The command\'s output is then a pipe, not a terminal'
complete -c pglock -n "__fish_pglock_needs_command" -l quiet-on-success -d 'Print the command\'s output only if the run fails (any non-zero exit status of pglock), as chronic does: for cron, which mails whatever a job prints. Implies --capture; the output waits in an unlinked temporary file'
complete -c pglock -n "__fish_pglock_needs_command" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_needs_command" -s q -l quiet -d 'Print nothing when the lock is busy'
complete -c pglock -n "__fish_pglock_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pglock -n "__fish_pglock_needs_command" -s V -l version -d 'Print version'
complete -c pglock -n "__fish_pglock_needs_command" -a "status" -d 'Show who holds a lock and who waits for it; exit 0 if held, 3 if free'
complete -c pglock -n "__fish_pglock_needs_command" -a "list" -d 'List every advisory lock in the current database, holders and waiters'
complete -c pglock -n "__fish_pglock_needs_command" -a "key" -d 'Print a key\'s lock id, where pg_locks shows it, and a SQL query that finds it. Needs no server'
complete -c pglock -n "__fish_pglock_needs_command" -a "init" -d 'Create the run ledger table (for --record and --once-per) and its indexes. Safe to run again, and from several hosts at once'
complete -c pglock -n "__fish_pglock_needs_command" -a "history" -d 'Show recorded runs, newest first'
complete -c pglock -n "__fish_pglock_needs_command" -a "check" -d 'A monitoring plugin (Nagios, Icinga, Sensu): is a key\'s last success recent enough?'
complete -c pglock -n "__fish_pglock_needs_command" -a "metrics" -d 'Print the Prometheus text format for every key in the ledger'
complete -c pglock -n "__fish_pglock_needs_command" -a "prune" -d 'Delete old runs in batches, keeping each key\'s and each lock\'s newest run and newest success'
complete -c pglock -n "__fish_pglock_needs_command" -a "doctor" -d 'Check that this host\'s setup is safe for the runs you describe: the connection, a pooler in the path, the lease, connection limits, the ledger, the clock. Takes no lock and writes nothing; exit 0 if all is well, 1 for a warning, 2 for a failure'
complete -c pglock -n "__fish_pglock_using_subcommand status" -s k -l key -d 'Name of the lock, as given to pglock --key' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l lock-id -d 'A raw lock id: one signed 64-bit integer, or A,B (two signed 32-bit)' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l key-hash -d 'How KEY becomes a lock id, as in the main command' -r -f -a "sha256\t'First 8 bytes of SHA-256(key), big-endian, signed'
sqlx\t'sqlx\'s PgAdvisoryLock::new: HKDF-SHA256 (no salt), 8 bytes, little-endian, signed'
postgres-lock\t'Python postgres-lock: SHA-1 of the key as a decimal integer, its first 18 digits'"
complete -c pglock -n "__fish_pglock_using_subcommand status" -l limit -d 'The --limit its users pass, for a semaphore: count its N slots. Without it every slot that can exist is read, and N comes from the holders\' application_names' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -s d -l database-url -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql' -r
complete -c pglock -n "__fish_pglock_using_subcommand status" -l json -d 'Print one JSON object instead of a table'
complete -c pglock -n "__fish_pglock_using_subcommand status" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pglock -n "__fish_pglock_using_subcommand list" -s d -l database-url -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql' -r
complete -c pglock -n "__fish_pglock_using_subcommand list" -l json -d 'Print a JSON array with one object per pg_locks row instead of a table'
complete -c pglock -n "__fish_pglock_using_subcommand list" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_using_subcommand list" -s h -l help -d 'Print help'
complete -c pglock -n "__fish_pglock_using_subcommand key" -l lock-id -d 'A raw lock id instead: one signed 64-bit integer, or A,B (two signed 32-bit)' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -l key-hash -d 'How KEY becomes a lock id, as in the main command' -r -f -a "sha256\t'First 8 bytes of SHA-256(key), big-endian, signed'
sqlx\t'sqlx\'s PgAdvisoryLock::new: HKDF-SHA256 (no salt), 8 bytes, little-endian, signed'
postgres-lock\t'Python postgres-lock: SHA-1 of the key as a decimal integer, its first 18 digits'"
complete -c pglock -n "__fish_pglock_using_subcommand key" -l limit -d 'Also print the ids of the N slots and the queue that --limit N uses' -r
complete -c pglock -n "__fish_pglock_using_subcommand key" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_using_subcommand key" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pglock -n "__fish_pglock_using_subcommand init" -l grant -d 'Grant ROLE what a runner needs: SELECT, INSERT and UPDATE of the end columns (no DELETE), and USAGE on the schema. ROLE is taken literally, case and all. Repeatable' -r
complete -c pglock -n "__fish_pglock_using_subcommand init" -l ledger -d 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public' -r
complete -c pglock -n "__fish_pglock_using_subcommand init" -s d -l database-url -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql' -r
complete -c pglock -n "__fish_pglock_using_subcommand init" -l print -d 'Only print the SQL, for a DBA to apply; connect to nothing'
complete -c pglock -n "__fish_pglock_using_subcommand init" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_using_subcommand init" -s h -l help -d 'Print help'
complete -c pglock -n "__fish_pglock_using_subcommand history" -s k -l key -d 'The runs of this key' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l lock-id -d 'The runs of this raw lock id (recorded as lock-id:ID)' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l since -d 'Only runs started within DURATION, by the server\'s clock' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l last -d 'At most N runs [default: 20, or all with --since]' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l ledger -d 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -s d -l database-url -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql' -r
complete -c pglock -n "__fish_pglock_using_subcommand history" -l all -d 'The runs of every key'
complete -c pglock -n "__fish_pglock_using_subcommand history" -l json -d 'Print a JSON array instead of a table'
complete -c pglock -n "__fish_pglock_using_subcommand history" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_using_subcommand history" -s h -l help -d 'Print help'
complete -c pglock -n "__fish_pglock_using_subcommand check" -s k -l key -d 'Name of the lock, as given to pglock --key' -r
complete -c pglock -n "__fish_pglock_using_subcommand check" -l lock-id -d 'A raw lock id: one signed 64-bit integer, or A,B (two signed 32-bit)' -r
complete -c pglock -n "__fish_pglock_using_subcommand check" -l critical -d 'CRITICAL when the last success is older than this (or there is none)' -r
complete -c pglock -n "__fish_pglock_using_subcommand check" -l warning -d 'WARNING when the last success is older than this; below --critical' -r
complete -c pglock -n "__fish_pglock_using_subcommand check" -l ledger -d 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public' -r
complete -c pglock -n "__fish_pglock_using_subcommand check" -s d -l database-url -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql' -r
complete -c pglock -n "__fish_pglock_using_subcommand check" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_using_subcommand check" -s h -l help -d 'Print help'
complete -c pglock -n "__fish_pglock_using_subcommand metrics" -l output -d 'Write to FILE instead of standard output: atomically (a temporary file, then rename) for node_exporter\'s textfile collector, to a symlink\'s target if FILE is one; a FIFO or a device is written in place' -r -F
complete -c pglock -n "__fish_pglock_using_subcommand metrics" -l ledger -d 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public' -r
complete -c pglock -n "__fish_pglock_using_subcommand metrics" -s d -l database-url -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql' -r
complete -c pglock -n "__fish_pglock_using_subcommand metrics" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_using_subcommand metrics" -s h -l help -d 'Print help'
complete -c pglock -n "__fish_pglock_using_subcommand prune" -l older-than -d 'Delete runs that started longer ago than DURATION' -r
complete -c pglock -n "__fish_pglock_using_subcommand prune" -l ledger -d 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public' -r
complete -c pglock -n "__fish_pglock_using_subcommand prune" -s d -l database-url -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql' -r
complete -c pglock -n "__fish_pglock_using_subcommand prune" -l dry-run -d 'Only count what would be deleted'
complete -c pglock -n "__fish_pglock_using_subcommand prune" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_using_subcommand prune" -s h -l help -d 'Print help'
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -s k -l key -d 'The lock the runs will take, as given to pglock --key (optional: named in the report)' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l lock-id -d 'A raw lock id instead of a key' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l key-hash -d 'How KEY becomes a lock id, as in the main command' -r -f -a "sha256\t'First 8 bytes of SHA-256(key), big-endian, signed'
sqlx\t'sqlx\'s PgAdvisoryLock::new: HKDF-SHA256 (no salt), 8 bytes, little-endian, signed'
postgres-lock\t'Python postgres-lock: SHA-1 of the key as a decimal integer, its first 18 digits'"
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l scope -d 'The scope the runs will use: a session lock through a transaction pooler is unsafe' -r -f -a "session\t'pg_advisory_lock, released with pg_advisory_unlock'
xact\t'pg_advisory_xact_lock inside a transaction, released by COMMIT or ROLLBACK'"
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l once-per -d 'The runs use --once-per (implies --record): check the ledger table' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l ledger -d 'The ledger table to check' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l limit -d 'The runs\' --limit (a semaphore takes one connection per holder and waiter)' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l check-interval -d 'The runs\' --check-interval, for the lease they produce' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l kill-after -d 'The runs\' --kill-after, for the lease they produce' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l lease -d 'The runs\' --lease (0: none)' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l fleet -d 'How many hosts will run pglock against this server at once, to judge the connection limits' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -s d -l database-url -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql' -r
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l record -d 'The runs record themselves: check the ledger table'
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -l json -d 'Print one JSON object instead of lines'
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -s v -l verbose -d 'Log each step to stderr with a timestamp'
complete -c pglock -n "__fish_pglock_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
