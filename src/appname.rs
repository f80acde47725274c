//! The application_name of pglock's sessions, `pglock:<label>@<host>:<pid>`: how a holder is
//! recognised in pg_stat_activity.

/// PostgreSQL truncates application_name to 63 bytes; we shorten it ourselves so the
/// `@host:pid` end, which identifies the holder, survives.
const NAMEDATALEN: usize = 63;

/// `pglock:<label>@<host>:<pid>`, shortened to what the server keeps.
pub fn application_name(label: &str) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    let tail = format!("@{host}:{}", std::process::id());
    let room = NAMEDATALEN.saturating_sub("pglock:".len() + tail.len());
    let mut cut = label.len().min(room);
    while !label.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = format!("pglock:{}{tail}", &label[..cut]);
    // A pathological hostname could still overflow; the server would cut the end, so we do it
    // ourselves at a character boundary.
    let mut end = name.len().min(NAMEDATALEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_keeps_host_and_pid() {
        let name = application_name(&"k".repeat(200));
        assert!(name.len() <= NAMEDATALEN, "{name}");
        assert!(name.ends_with(&format!(":{}", std::process::id())));
        assert!(name.starts_with("pglock:kkk"));
        let short = application_name("nightly-report");
        assert!(short.starts_with("pglock:nightly-report@"));
        let multibyte = application_name(&"é".repeat(100));
        assert!(multibyte.len() <= NAMEDATALEN);
    }
}
