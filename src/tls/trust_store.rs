//! Keeping OpenSSL's default CA bundle out of the connectors that do not use it.
//!
//! native-tls loads the bundle into every connector it builds, twice (once through OpenSSL's
//! default paths, once through openssl-probe's), and OpenSSL 3 takes about 30 ms to parse it
//! each time: most of a pglock run with sslmode=prefer. Neither the unchecked modes nor an
//! sslrootcert file use it (a file replaces the store), and the only way to tell native-tls is
//! the environment: SSL_CERT_FILE pointing at an empty file while the connector is built.
//!
//! Changing the environment is sound only while no other thread can read it: C code reads it
//! without Rust's lock (OpenSSL itself, the resolver in getaddrinfo). So [`without`] counts the
//! process's threads first, and does nothing unless the caller is the only one. The run path
//! builds its connector before it starts any thread (see `run::run`) and shares it with the
//! observer; a connector built where other threads run simply pays for the bundle.

const VAR: &str = "SSL_CERT_FILE";

/// Runs `build` with SSL_CERT_FILE at /dev/null, then restores the variable, so the command
/// pglock runs inherits the environment it was given. None, without running `build`, when the
/// process has another thread. `build` must not start a thread (building a native-tls
/// connector does not).
pub(super) fn without<T>(build: impl FnOnce() -> T) -> Option<T> {
    if !single_threaded() {
        return None;
    }
    let saved = std::env::var_os(VAR);
    // SAFETY: set_var races only with another thread reading or writing the environment, and
    // single_threaded() just found this thread alone in the process. Only a thread of this
    // process can start another, and this one starts none until the variable is restored below
    // (`build` must not).
    unsafe { std::env::set_var(VAR, "/dev/null") };
    let built = build();
    // SAFETY: as above: still the only thread, since `build` started none.
    unsafe {
        match saved {
            Some(v) => std::env::set_var(VAR, v),
            None => std::env::remove_var(VAR),
        }
    }
    Some(built)
}

/// Whether the calling thread is the process's only thread, as Linux counts them. Once true it
/// stays true until this thread starts another. Where /proc cannot say, false.
fn single_threaded() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .is_some_and(|count| count.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_thread_keeps_the_environment_as_it_is() {
        // The test harness runs this on a thread of its own: the process is never alone here.
        let before = std::env::var_os(VAR);
        assert_eq!(without(|| std::env::var_os(VAR)), None);
        assert_eq!(std::env::var_os(VAR), before);
    }
}
