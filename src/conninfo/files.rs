//! The files libpq reads besides the connection string: service files (pg_service.conf) and the
//! password file (~/.pgpass).

use super::hosts::Entry;
use super::known::lookup;
use super::{Env, Options, Source, path_var, usage};
use anyhow::Result;
use std::io::ErrorKind;
use std::path::Path;

/// Debian's libpq looks for the system-wide pg_service.conf here when PGSYSCONFDIR is unset.
const SYSCONFDIR: &str = "/etc/postgresql-common";

/// Fills unset options from the named service: PGSERVICEFILE (or ~/.pg_service.conf) first,
/// then PGSYSCONFDIR/pg_service.conf. The first file that defines the service is the only one
/// used.
pub(super) fn apply_service(
    opts: &mut Options,
    name: &str,
    env: Env,
    home: Option<&Path>,
) -> Result<()> {
    let user_file =
        path_var(env, "PGSERVICEFILE").or_else(|| home.map(|h| h.join(".pg_service.conf")));
    let system_file = path_var(env, "PGSYSCONFDIR")
        .unwrap_or_else(|| SYSCONFDIR.into())
        .join("pg_service.conf");
    let mut searched = Vec::new();
    for file in user_file.into_iter().chain([system_file]) {
        if !file.exists() {
            continue;
        }
        searched.push(file.display().to_string());
        if read_service(opts, name, &file)? {
            return Ok(());
        }
    }
    let place = if searched.is_empty() {
        "there is no service file".to_string()
    } else {
        format!("it is not in {}", searched.join(" or "))
    };
    Err(usage(format!(
        "unknown service \"{name}\": {place}; check the name, or point PGSERVICEFILE at the \
         file that defines it"
    )))
}

/// Reads one service file; true if it defines the service. libpq's format: `[name]` sections of
/// `key=value` lines (no spaces around `=`), `#` comments.
fn read_service(opts: &mut Options, name: &str, file: &Path) -> Result<bool> {
    let text = std::fs::read(file)
        .map_err(|e| usage(format!("cannot read service file {}: {e}", file.display())))?;
    let text = String::from_utf8_lossy(&text);
    let mut found = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            if found {
                break;
            }
            found = section
                .strip_prefix(name)
                .is_some_and(|after| after.starts_with(']'));
            continue;
        }
        if !found {
            continue;
        }
        let at = || format!("{}, line {}", file.display(), n + 1);
        let Some((key, value)) = line.split_once('=') else {
            return Err(usage(format!(
                "syntax error in service file {}: expected key=value",
                at()
            )));
        };
        if key == "service" {
            return Err(usage(format!(
                "a service cannot name another service ({})",
                at()
            )));
        }
        let Some(k) = lookup(key) else {
            return Err(usage(format!(
                "unknown option \"{key}\" in service file {}; check its spelling (and write no \
                 spaces around \"=\")",
                at()
            )));
        };
        opts.fill(
            k.key,
            value.to_string(),
            Source::Service(file.to_path_buf()),
        );
    }
    Ok(found)
}

/// The password for these hosts from a libpq password file, matched host by host as libpq does.
pub(super) fn password_from_file(
    file: &Path,
    entries: &[Entry],
    dbname: &str,
    user: &str,
) -> Result<Option<String>> {
    let Some(text) = read_password_file(file) else {
        return Ok(None);
    };
    let mut found: Vec<String> = Vec::new();
    for e in entries {
        if let Some(pw) = passfile_match(&text, &e.passfile_host, &e.port_text, dbname, user)
            && !found.contains(&pw)
        {
            found.push(pw);
        }
    }
    if found.len() > 1 {
        // rust-postgres sends one password to every host of the list.
        return Err(usage(format!(
            "password file \"{}\" gives different passwords for the hosts of the host list; \
             pglock needs one password for all of them (use a \"*\" line or PGPASSWORD)",
            file.display()
        )));
    }
    Ok(found.pop())
}

/// The text of a password file pglock may use. A missing file is skipped quietly; one that
/// exists but is not used gets a warning: libpq's for a file that is not plain or that others
/// can read, and one of pglock's own for a file it cannot read, which libpq skips without a
/// word, leaving the user to wonder why the password in it was not sent.
fn read_password_file(file: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let shown = file.display();
    let unreadable = |e: std::io::Error| -> Option<String> {
        crate::warn!("warning: password file \"{shown}\" cannot be read ({e}); ignoring it");
        None
    };
    let meta = match std::fs::metadata(file) {
        Ok(meta) => meta,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return None;
        }
        Err(e) => return unreadable(e),
    };
    if !meta.is_file() {
        crate::warn!("warning: password file \"{shown}\" is not a plain file; ignoring it");
        return None;
    }
    if meta.mode() & 0o077 != 0 {
        crate::warn!(
            "warning: password file \"{shown}\" has group or world access, so it is ignored; \
             run chmod 0600 \"{shown}\""
        );
        return None;
    }
    match std::fs::read(file) {
        Ok(text) => Some(String::from_utf8_lossy(&text).into_owned()),
        Err(e) => unreadable(e),
    }
}

/// The first line of a password file that matches, de-escaped.
fn passfile_match(text: &str, host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        let mut ok = true;
        for want in [host, port, dbname, user] {
            match field_matches(rest, want) {
                Some(after) => rest = after,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            // The password runs to the next unescaped ':' or the end of the line.
            let mut pw = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    ':' => break,
                    '\\' => match chars.next() {
                        Some(next) => pw.push(next),
                        None => pw.push('\\'),
                    },
                    c => pw.push(c),
                }
            }
            return Some(pw);
        }
    }
    None
}

/// If the next field of a password-file line matches `want` (`*`, or the value with `\:` and
/// `\\` escapes), the rest of the line after its ':'.
fn field_matches<'a>(line: &'a str, want: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut field = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, next)) => field.push(next),
                None => return None,
            },
            ':' => return (field == want).then(|| &line[i + 1..]),
            c => field.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
db1:5432:app:alice:first
db1:5432:app:alice:second
db\\:x:*:*:bob:esc\\:aped\\\\pw:trailing
localhost:5433:*:carol:viasocket
*:*:*:dave:wild
";

    #[test]
    fn password_file_matching() {
        let text = TEXT;
        assert_eq!(
            passfile_match(text, "db1", "5432", "app", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(passfile_match(text, "db1", "5433", "app", "alice"), None);
        assert_eq!(
            passfile_match(text, "db:x", "1", "any", "bob").as_deref(),
            Some("esc:aped\\pw")
        );
        assert_eq!(
            passfile_match(text, "other", "1", "x", "dave").as_deref(),
            Some("wild")
        );
    }
}
