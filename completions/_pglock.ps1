
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'pglock' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'pglock'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'pglock' {
            [CompletionResult]::new('-k', '-k', [CompletionResultType]::ParameterName, 'Name of the lock; any UTF-8 string of 1 to 1024 bytes')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Name of the lock; any UTF-8 string of 1 to 1024 bytes')
            [CompletionResult]::new('--lock-id', '--lock-id', [CompletionResultType]::ParameterName, 'A raw lock id instead of a key: one signed 64-bit integer, or A,B (two signed 32-bit)')
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'Run STRING with /bin/sh -c instead of a COMMAND after --')
            [CompletionResult]::new('--command', '--command', [CompletionResultType]::ParameterName, 'Run STRING with /bin/sh -c instead of a COMMAND after --')
            [CompletionResult]::new('-w', '-w', [CompletionResultType]::ParameterName, 'Wait at most this long for the lock (30, 0.5, 500ms, 10m, 1h30m); 0 means --nowait')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Wait at most this long for the lock (30, 0.5, 500ms, 10m, 1h30m); 0 means --nowait')
            [CompletionResult]::new('-E', '-E ', [CompletionResultType]::ParameterName, 'Exit status when the lock was not obtained')
            [CompletionResult]::new('--conflict-exit-code', '--conflict-exit-code', [CompletionResultType]::ParameterName, 'Exit status when the lock was not obtained')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N holders at once (a counting semaphore of N slots); every user of a key must pass the same N. The command gets its slot in PGLOCK_SLOT')
            [CompletionResult]::new('--key-hash', '--key-hash', [CompletionResultType]::ParameterName, 'How --key becomes a lock id: pglock''s own SHA-256 formula, or the one sqlx or Python''s postgres-lock uses, to share a lock with an application built on them')
            [CompletionResult]::new('--max-runtime', '--max-runtime', [CompletionResultType]::ParameterName, 'Stop the command when it has run this long, counted from its first start, retries and their delays included: SIGTERM to its process group, SIGKILL after --kill-after; pglock exits 124 once it has exited, and only then releases the lock')
            [CompletionResult]::new('--retries', '--retries', [CompletionResultType]::ParameterName, 'When the command exits non-zero by itself, run it again, still holding the lock, up to N more times (0 to 100). The command gets PGLOCK_ATTEMPT (1, 2, ...); pglock exits with the last attempt''s status')
            [CompletionResult]::new('--retry-delay', '--retry-delay', [CompletionResultType]::ParameterName, 'The pause before the first retry; it doubles for each next one, with up to 20% random jitter either way. The lock stays held and checked meanwhile')
            [CompletionResult]::new('--splay', '--splay', [CompletionResultType]::ParameterName, 'Before connecting, wait a random time between 0 and DURATION, so that a fleet started by the same clock does not reach the server in the same millisecond')
            [CompletionResult]::new('--min-hold', '--min-hold', [CompletionResultType]::ParameterName, 'Keep the lock at least this long after it was acquired, even if the command ends sooner, so hosts whose clocks differ a little do not run the same job twice')
            [CompletionResult]::new('--scope', '--scope', [CompletionResultType]::ParameterName, 'Lock scope: a session-level lock, or a transaction-level lock inside BEGIN ... COMMIT')
            [CompletionResult]::new('--once-per', '--once-per', [CompletionResultType]::ParameterName, 'Run at most once per DURATION across every host: once the lock is granted, skip the command if a run of this lock succeeded within DURATION, by the server''s clock. Implies --record')
            [CompletionResult]::new('--max-attempts', '--max-attempts', [CompletionResultType]::ParameterName, 'With --once-per: when N runs failed within DURATION, do not run again; exit with the conflict status')
            [CompletionResult]::new('--done-exit-code', '--done-exit-code', [CompletionResultType]::ParameterName, 'With --once-per: the exit status when the job already succeeded within DURATION')
            [CompletionResult]::new('--ledger', '--ledger', [CompletionResultType]::ParameterName, 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--check-interval', '--check-interval', [CompletionResultType]::ParameterName, 'How often to ask the server whether the lock is still held while the command runs')
            [CompletionResult]::new('--on-lost', '--on-lost', [CompletionResultType]::ParameterName, 'What to do when the lock is lost while the command runs')
            [CompletionResult]::new('--leftovers', '--leftovers', [CompletionResultType]::ParameterName, 'What to do with processes the command leaves running when it exits (`cmd &`, a double-forked helper): stop them before the release, wait for them, or release anyway')
            [CompletionResult]::new('--kill-after', '--kill-after', [CompletionResultType]::ParameterName, 'After terminating the command (lost lock), send SIGKILL if it is still running this long')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'How long the server keeps the lock of a holder that went silent (a lost host, a pulled cable) [default: 2 x --check-interval + --kill-after + 2s; 0: none]')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Bound on each connection attempt [default: 10s, or connect_timeout / PGCONNECT_TIMEOUT]')
            [CompletionResult]::new('--retry-connect', '--retry-connect', [CompletionResultType]::ParameterName, 'Keep retrying the first connection, with backoff, for up to this long before giving up')
            [CompletionResult]::new('--ping', '--ping', [CompletionResultType]::ParameterName, 'Report the run to a monitor that speaks healthchecks.io''s ping protocol: URL/start when the command starts, URL/STATUS with pglock''s exit status when the run ends')
            [CompletionResult]::new('--ping-timeout', '--ping-timeout', [CompletionResultType]::ParameterName, 'How long the end ping may take in all, retries included (1s after a terminating signal)')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Do not wait: if the lock is busy, exit with the conflict status at once')
            [CompletionResult]::new('--nowait', '--nowait', [CompletionResultType]::ParameterName, 'Do not wait: if the lock is busy, exit with the conflict status at once')
            [CompletionResult]::new('-s', '-s', [CompletionResultType]::ParameterName, 'Take a shared lock: shared holders coexist, an exclusive holder excludes them all')
            [CompletionResult]::new('--shared', '--shared', [CompletionResultType]::ParameterName, 'Take a shared lock: shared holders coexist, an exclusive holder excludes them all')
            [CompletionResult]::new('--supersede', '--supersede', [CompletionResultType]::ParameterName, 'Only the newest waits: a newer --supersede (or --replace) run of the lock makes this one stop waiting and exit with the conflict status, and this one does the same to older ones. Newer means it began waiting later, by the server''s clock')
            [CompletionResult]::new('--replace', '--replace', [CompletionResultType]::ParameterName, 'The newest wins outright (implies --supersede): also stop the running command of a holder that was itself started with --replace (SIGTERM, SIGKILL after its --kill-after); this run starts once that command has exited')
            [CompletionResult]::new('--fencing-token', '--fencing-token', [CompletionResultType]::ParameterName, 'Give the command PGLOCK_FENCING_TOKEN: a number that grows from each holder of the lock (of each slot, with --limit) to the next, also across crashes and failovers of the server, so that storage can reject the writes of a holder that lost the lock')
            [CompletionResult]::new('--record', '--record', [CompletionResultType]::ParameterName, 'Record the run in the ledger table: a row before the command starts, its end before the lock is released. The command gets PGLOCK_RUN_ID and PGLOCK_LAST_SUCCESS. A run that finds an earlier one still running (the server ended its holder''s session) first waits until that command must have stopped: the lock-delay')
            [CompletionResult]::new('--record-command', '--record-command', [CompletionResultType]::ParameterName, 'Store the command line in the ledger''s command column too (it may carry secrets)')
            [CompletionResult]::new('--capture', '--capture', [CompletionResultType]::ParameterName, 'Pass the command''s stdout and stderr through pglock, keeping their last 10 KiB for the --ping report. The command''s output is then a pipe, not a terminal')
            [CompletionResult]::new('--quiet-on-success', '--quiet-on-success', [CompletionResultType]::ParameterName, 'Print the command''s output only if the run fails (any non-zero exit status of pglock), as chronic does: for cron, which mails whatever a job prints. Implies --capture; the output waits in an unlinked temporary file')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print nothing when the lock is busy')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print nothing when the lock is busy')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show who holds a lock and who waits for it; exit 0 if held, 3 if free')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List every advisory lock in the current database, holders and waiters')
            [CompletionResult]::new('key', 'key', [CompletionResultType]::ParameterValue, 'Print a key''s lock id, where pg_locks shows it, and a SQL query that finds it. Needs no server')
            [CompletionResult]::new('init', 'init', [CompletionResultType]::ParameterValue, 'Create the run ledger table (for --record and --once-per) and its indexes. Safe to run again, and from several hosts at once')
            [CompletionResult]::new('history', 'history', [CompletionResultType]::ParameterValue, 'Show recorded runs, newest first')
            [CompletionResult]::new('check', 'check', [CompletionResultType]::ParameterValue, 'A monitoring plugin (Nagios, Icinga, Sensu): is a key''s last success recent enough?')
            [CompletionResult]::new('metrics', 'metrics', [CompletionResultType]::ParameterValue, 'Print the Prometheus text format for every key in the ledger')
            [CompletionResult]::new('prune', 'prune', [CompletionResultType]::ParameterValue, 'Delete old runs in batches, keeping each key''s and each lock''s newest run and newest success')
            [CompletionResult]::new('doctor', 'doctor', [CompletionResultType]::ParameterValue, 'Check that this host''s setup is safe for the runs you describe: the connection, a pooler in the path, the lease, connection limits, the ledger, the clock. Takes no lock and writes nothing; exit 0 if all is well, 1 for a warning, 2 for a failure')
            break
        }
        'pglock;status' {
            [CompletionResult]::new('-k', '-k', [CompletionResultType]::ParameterName, 'Name of the lock, as given to pglock --key')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Name of the lock, as given to pglock --key')
            [CompletionResult]::new('--lock-id', '--lock-id', [CompletionResultType]::ParameterName, 'A raw lock id: one signed 64-bit integer, or A,B (two signed 32-bit)')
            [CompletionResult]::new('--key-hash', '--key-hash', [CompletionResultType]::ParameterName, 'How KEY becomes a lock id, as in the main command')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'The --limit its users pass, for a semaphore: count its N slots. Without it every slot that can exist is read, and N comes from the holders'' application_names')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object instead of a table')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'pglock;list' {
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print a JSON array with one object per pg_locks row instead of a table')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'pglock;key' {
            [CompletionResult]::new('--lock-id', '--lock-id', [CompletionResultType]::ParameterName, 'A raw lock id instead: one signed 64-bit integer, or A,B (two signed 32-bit)')
            [CompletionResult]::new('--key-hash', '--key-hash', [CompletionResultType]::ParameterName, 'How KEY becomes a lock id, as in the main command')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'Also print the ids of the N slots and the queue that --limit N uses')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'pglock;init' {
            [CompletionResult]::new('--grant', '--grant', [CompletionResultType]::ParameterName, 'Grant ROLE what a runner needs: SELECT, INSERT and UPDATE of the end columns (no DELETE), and USAGE on the schema. ROLE is taken literally, case and all. Repeatable')
            [CompletionResult]::new('--ledger', '--ledger', [CompletionResultType]::ParameterName, 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--print', '--print', [CompletionResultType]::ParameterName, 'Only print the SQL, for a DBA to apply; connect to nothing')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'pglock;history' {
            [CompletionResult]::new('-k', '-k', [CompletionResultType]::ParameterName, 'The runs of this key')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'The runs of this key')
            [CompletionResult]::new('--lock-id', '--lock-id', [CompletionResultType]::ParameterName, 'The runs of this raw lock id (recorded as lock-id:ID)')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only runs started within DURATION, by the server''s clock')
            [CompletionResult]::new('--last', '--last', [CompletionResultType]::ParameterName, 'At most N runs [default: 20, or all with --since]')
            [CompletionResult]::new('--ledger', '--ledger', [CompletionResultType]::ParameterName, 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'The runs of every key')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print a JSON array instead of a table')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'pglock;check' {
            [CompletionResult]::new('-k', '-k', [CompletionResultType]::ParameterName, 'Name of the lock, as given to pglock --key')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Name of the lock, as given to pglock --key')
            [CompletionResult]::new('--lock-id', '--lock-id', [CompletionResultType]::ParameterName, 'A raw lock id: one signed 64-bit integer, or A,B (two signed 32-bit)')
            [CompletionResult]::new('--critical', '--critical', [CompletionResultType]::ParameterName, 'CRITICAL when the last success is older than this (or there is none)')
            [CompletionResult]::new('--warning', '--warning', [CompletionResultType]::ParameterName, 'WARNING when the last success is older than this; below --critical')
            [CompletionResult]::new('--ledger', '--ledger', [CompletionResultType]::ParameterName, 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'pglock;metrics' {
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Write to FILE instead of standard output: atomically (a temporary file, then rename) for node_exporter''s textfile collector, to a symlink''s target if FILE is one; a FIFO or a device is written in place')
            [CompletionResult]::new('--ledger', '--ledger', [CompletionResultType]::ParameterName, 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'pglock;prune' {
            [CompletionResult]::new('--older-than', '--older-than', [CompletionResultType]::ParameterName, 'Delete runs that started longer ago than DURATION')
            [CompletionResult]::new('--ledger', '--ledger', [CompletionResultType]::ParameterName, 'The ledger table, [SCHEMA.]TABLE; a name without a schema is in public')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Only count what would be deleted')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'pglock;doctor' {
            [CompletionResult]::new('-k', '-k', [CompletionResultType]::ParameterName, 'The lock the runs will take, as given to pglock --key (optional: named in the report)')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'The lock the runs will take, as given to pglock --key (optional: named in the report)')
            [CompletionResult]::new('--lock-id', '--lock-id', [CompletionResultType]::ParameterName, 'A raw lock id instead of a key')
            [CompletionResult]::new('--key-hash', '--key-hash', [CompletionResultType]::ParameterName, 'How KEY becomes a lock id, as in the main command')
            [CompletionResult]::new('--scope', '--scope', [CompletionResultType]::ParameterName, 'The scope the runs will use: a session lock through a transaction pooler is unsafe')
            [CompletionResult]::new('--once-per', '--once-per', [CompletionResultType]::ParameterName, 'The runs use --once-per (implies --record): check the ledger table')
            [CompletionResult]::new('--ledger', '--ledger', [CompletionResultType]::ParameterName, 'The ledger table to check')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'The runs'' --limit (a semaphore takes one connection per holder and waiter)')
            [CompletionResult]::new('--check-interval', '--check-interval', [CompletionResultType]::ParameterName, 'The runs'' --check-interval, for the lease they produce')
            [CompletionResult]::new('--kill-after', '--kill-after', [CompletionResultType]::ParameterName, 'The runs'' --kill-after, for the lease they produce')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'The runs'' --lease (0: none)')
            [CompletionResult]::new('--fleet', '--fleet', [CompletionResultType]::ParameterName, 'How many hosts will run pglock against this server at once, to judge the connection limits')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--record', '--record', [CompletionResultType]::ParameterName, 'The runs record themselves: check the ledger table')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object instead of lines')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log each step to stderr with a timestamp')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
