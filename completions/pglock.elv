
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
            cand --min-hold 'Keep the lock at least this long after it was acquired, even if the command ends sooner, so hosts whose clocks differ a little do not run the same job twice'
            cand --scope 'Lock scope: a session-level lock, or a transaction-level lock inside BEGIN ... COMMIT'
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --check-interval 'How often to ask the server whether the lock is still held while the command runs'
            cand --on-lost 'What to do when the lock is lost while the command runs'
            cand --kill-after 'After terminating the command (lost lock), send SIGKILL if it is still running this long'
            cand --connect-timeout 'Bound on each connection attempt [default: 10s, or connect_timeout / PGCONNECT_TIMEOUT]'
            cand --retry-connect 'Keep retrying the first connection, with backoff, for up to this long before giving up'
            cand -n 'Do not wait: if the lock is busy, exit with the conflict status at once'
            cand --nowait 'Do not wait: if the lock is busy, exit with the conflict status at once'
            cand -s 'Take a shared lock: shared holders coexist, an exclusive holder excludes them all'
            cand --shared 'Take a shared lock: shared holders coexist, an exclusive holder excludes them all'
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
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'pglock;list'= {
            cand -d 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --database-url 'PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql'
            cand --json 'Print a JSON array with one object per pg_locks row instead of a table'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'pglock;key'= {
            cand --lock-id 'A raw lock id instead: one signed 64-bit integer, or A,B (two signed 32-bit)'
            cand --key-hash 'How KEY becomes a lock id, as in the main command'
            cand --limit 'Also print the ids of the N slots and the queue that --limit N uses'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
    ]
    $completions[$command]
}
