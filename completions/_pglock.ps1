
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
            [CompletionResult]::new('--min-hold', '--min-hold', [CompletionResultType]::ParameterName, 'Keep the lock at least this long after it was acquired, even if the command ends sooner, so hosts whose clocks differ a little do not run the same job twice')
            [CompletionResult]::new('--scope', '--scope', [CompletionResultType]::ParameterName, 'Lock scope: a session-level lock, or a transaction-level lock inside BEGIN ... COMMIT')
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--check-interval', '--check-interval', [CompletionResultType]::ParameterName, 'How often to ask the server whether the lock is still held while the command runs')
            [CompletionResult]::new('--on-lost', '--on-lost', [CompletionResultType]::ParameterName, 'What to do when the lock is lost while the command runs')
            [CompletionResult]::new('--kill-after', '--kill-after', [CompletionResultType]::ParameterName, 'After terminating the command (lost lock), send SIGKILL if it is still running this long')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Bound on each connection attempt [default: 10s, or connect_timeout / PGCONNECT_TIMEOUT]')
            [CompletionResult]::new('--retry-connect', '--retry-connect', [CompletionResultType]::ParameterName, 'Keep retrying the first connection, with backoff, for up to this long before giving up')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Do not wait: if the lock is busy, exit with the conflict status at once')
            [CompletionResult]::new('--nowait', '--nowait', [CompletionResultType]::ParameterName, 'Do not wait: if the lock is busy, exit with the conflict status at once')
            [CompletionResult]::new('-s', '-s', [CompletionResultType]::ParameterName, 'Take a shared lock: shared holders coexist, an exclusive holder excludes them all')
            [CompletionResult]::new('--shared', '--shared', [CompletionResultType]::ParameterName, 'Take a shared lock: shared holders coexist, an exclusive holder excludes them all')
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
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'pglock;list' {
            [CompletionResult]::new('-d', '-d', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print a JSON array with one object per pg_locks row instead of a table')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'pglock;key' {
            [CompletionResult]::new('--lock-id', '--lock-id', [CompletionResultType]::ParameterName, 'A raw lock id instead: one signed 64-bit integer, or A,B (two signed 32-bit)')
            [CompletionResult]::new('--key-hash', '--key-hash', [CompletionResultType]::ParameterName, 'How KEY becomes a lock id, as in the main command')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'Also print the ids of the N slots and the queue that --limit N uses')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
