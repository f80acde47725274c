//! The application_name of pglock's sessions, which says in pg_stat_activity who holds what:
//! built here when pglock connects, parsed here when a report reads pg_stat_activity.
//!
//! Forms, each at most 63 bytes (the server cuts longer names):
//! - `pglock:<key>@<host>:<pid>`: a holder or waiter of `--key <key>`;
//! - `pglock:#<id>@<host>:<pid>`: one of `--lock-id <id>` (`#42`, `#1,2`), so that a report
//!   tells lock id 42 from the key "42";
//! - `/<N>` at the end for `--limit N` (N above 1): reports learn the semaphore's size from it;
//! - `pglock-watch@<host>:<pid>`, `pglock-status@…`, `pglock-list@…`: sessions that only look
//!   and hold nothing; not `pglock:`, so they never read as holders.
//!
//! Encoding. The server replaces every byte of application_name outside printable ASCII (PG 16+:
//! with `\xNN`, before that with `?`), so `déploy` would arrive as `d??ploy`. pglock
//! percent-encodes such bytes (`d%C3%A9ploy`), and `%` and `@` themselves, and a `#` that starts
//! a key; reports decode. Printable ASCII keys, the usual case, read unchanged.
//!
//! Shortening. What gets cut is the key, at a character boundary, so no escape and no character
//! is split; the tail that identifies the process stays whole (the host name is cut to 32 bytes
//! first). A shortened key no longer hashes to its lock's id, and reports trust a key read from a
//! name only when it does.

use crate::key::LockId;
use std::fmt;

/// The most bytes the server keeps (NAMEDATALEN - 1).
pub const MAX_BYTES: usize = 63;
/// A host name is cut to this many encoded bytes, leaving the rest of the name to the key.
const MAX_HOST_BYTES: usize = 32;
const HOLDER: &str = "pglock:";

/// What a pglock session was told to lock: a key, or a raw lock id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Label {
    Key(String),
    LockId(LockId),
}

impl Label {
    /// `--key KEY` when there is one, else `--lock-id ID`.
    pub fn new(key: Option<&str>, id: LockId) -> Label {
        match key {
            Some(k) => Label::Key(k.to_string()),
            None => Label::LockId(id),
        }
    }

    /// What the ids of a `--limit` semaphore derive from: the key, or `lock-id:ID`.
    pub fn base(&self) -> String {
        match self {
            Label::Key(k) => k.clone(),
            Label::LockId(id) => crate::key::base(None, *id),
        }
    }
}

/// For reports: the key as it is (control characters escaped), or `--lock-id ID`.
impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Key(k) => f.write_str(&printable(k)),
            Label::LockId(id) => write!(f, "--lock-id {id}"),
        }
    }
}

/// Sessions that look at locks without taking one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observer {
    /// The waiting status line and -v reports.
    Watch,
    Status,
    List,
    /// The run ledger's commands, and the ledger's own connection of an xact-scope run.
    Ledger,
    /// `pglock doctor`.
    Doctor,
}

impl Observer {
    fn prefix(self) -> &'static str {
        match self {
            Observer::Watch => "pglock-watch",
            Observer::Status => "pglock-status",
            Observer::List => "pglock-list",
            Observer::Ledger => "pglock-ledger",
            Observer::Doctor => "pglock-doctor",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Takes (or waits for) the lock of `label`; `limit` is `--limit`, 1 for a plain lock.
    Holder {
        label: Label,
        limit: u16,
    },
    Observer(Observer),
}

/// One pglock session's application_name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppName {
    pub kind: Kind,
    pub host: String,
    pub pid: u32,
}

impl AppName {
    /// The name of this process's lock connection.
    pub fn holder(label: Label, limit: u16) -> AppName {
        AppName::here(Kind::Holder { label, limit })
    }

    /// The name of this process's looking-only connection.
    pub fn observer(observer: Observer) -> AppName {
        AppName::here(Kind::Observer(observer))
    }

    fn here(kind: Kind) -> AppName {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        AppName {
            kind,
            host,
            pid: std::process::id(),
        }
    }

    /// The same process's name for a looking-only session.
    pub fn as_observer(&self, observer: Observer) -> AppName {
        AppName {
            kind: Kind::Observer(observer),
            ..self.clone()
        }
    }

    /// The label of a holder.
    pub fn label(&self) -> Option<&Label> {
        match &self.kind {
            Kind::Holder { label, .. } => Some(label),
            Kind::Observer(_) => None,
        }
    }

    /// The `--limit` of a holder, when above 1.
    pub fn limit(&self) -> Option<u16> {
        match self.kind {
            Kind::Holder { limit, .. } if limit > 1 => Some(limit),
            _ => None,
        }
    }

    /// The name as sent to the server: printable ASCII, at most [`MAX_BYTES`].
    pub fn encoded(&self) -> String {
        let suffix = match self.limit() {
            Some(n) => format!(":{}/{n}", self.pid),
            None => format!(":{}", self.pid),
        };
        let (head, key) = match &self.kind {
            Kind::Holder {
                label: Label::Key(k),
                ..
            } => (HOLDER.to_string(), Some(k)),
            Kind::Holder {
                label: Label::LockId(id),
                ..
            } => (format!("{HOLDER}#{id}"), None),
            Kind::Observer(o) => (o.prefix().to_string(), None),
        };
        let fixed = head.len() + "@".len() + suffix.len();
        let host_room = MAX_HOST_BYTES.min(MAX_BYTES.saturating_sub(fixed));
        let host = encode(&self.host, host_room, |_, b| b"%@:/".contains(&b));
        let tail = format!("@{host}{suffix}");
        let key_room = MAX_BYTES.saturating_sub(head.len() + tail.len());
        let key = key.map_or(String::new(), |k| {
            encode(k, key_room, |i, b| {
                b"%@".contains(&b) || (i == 0 && b == b'#')
            })
        });
        format!("{head}{key}{tail}")
    }

    /// Reads a name that pglock built; None for anything else.
    pub fn parse(text: &str) -> Option<AppName> {
        let (head, tail) = text.rsplit_once('@')?;
        let (rest, limit) = match tail.rsplit_once('/') {
            Some((rest, n)) => (rest, n.parse::<u16>().ok().filter(|&n| n > 1)?),
            None => (tail, 1),
        };
        let (host, pid) = rest.rsplit_once(':')?;
        let kind = match head.strip_prefix(HOLDER) {
            Some(label) => Kind::Holder {
                label: parse_label(label)?,
                limit,
            },
            None => Kind::Observer(
                [
                    Observer::Watch,
                    Observer::Status,
                    Observer::List,
                    Observer::Ledger,
                ]
                .into_iter()
                .find(|o| o.prefix() == head)?,
            ),
        };
        Some(AppName {
            kind,
            host: decode(host)?,
            pid: pid.parse().ok()?,
        })
    }
}

fn parse_label(text: &str) -> Option<Label> {
    match text.strip_prefix('#') {
        Some(id) => LockId::parse(id).ok().map(Label::LockId),
        None => decode(text).filter(|k| !k.is_empty()).map(Label::Key),
    }
}

/// For reports: the name decoded, e.g. `pglock:déploy@web-3:4812`, `pglock:#42@web-3:4812/3`.
impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Holder {
                label: Label::Key(k),
                ..
            } => write!(f, "{HOLDER}{}", printable(k))?,
            Kind::Holder {
                label: Label::LockId(id),
                ..
            } => write!(f, "{HOLDER}#{id}")?,
            Kind::Observer(o) => f.write_str(o.prefix())?,
        }
        write!(f, "@{}:{}", printable(&self.host), self.pid)?;
        match self.limit() {
            Some(n) => write!(f, "/{n}"),
            None => Ok(()),
        }
    }
}

/// Percent-encodes `text` into at most `room` bytes, whole characters only. A byte is escaped
/// when it is not printable ASCII or when `reserved(index, byte)` says so.
fn encode(text: &str, room: usize, reserved: impl Fn(usize, u8) -> bool) -> String {
    let mut out = String::new();
    for (i, c) in text.char_indices() {
        let mut buf = [0u8; 4];
        let piece: String = c
            .encode_utf8(&mut buf)
            .bytes()
            .map(|b| {
                if (0x20..=0x7e).contains(&b) && !reserved(i, b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if out.len() + piece.len() > room {
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// Undoes [`encode`]; None when an escape is malformed or the bytes are not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `text` for a terminal or a table cell: control characters escaped (`\n`, `\u{1b}`), so a
/// key cannot break a line or move the cursor.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(kind: Kind, host: &str) -> AppName {
        AppName {
            kind,
            host: host.into(),
            pid: 48121,
        }
    }

    fn key(k: &str, limit: u16) -> AppName {
        at(
            Kind::Holder {
                label: Label::Key(k.into()),
                limit,
            },
            "web-3",
        )
    }

    #[test]
    fn plain_keys_read_as_before() {
        assert_eq!(
            key("nightly-report", 1).encoded(),
            "pglock:nightly-report@web-3:48121"
        );
        assert_eq!(
            key("nightly-report", 3).encoded(),
            "pglock:nightly-report@web-3:48121/3"
        );
    }

    #[test]
    fn every_form_survives_the_trip() {
        let names = [
            key("déploy-prod", 1),
            key("夜间报告", 4),
            key("a@b%c#d", 1),
            key("#tag", 1),
            key("tab\tand\u{1b}[2J", 1),
            key("42", 1),
            key("x", 1024),
            at(
                Kind::Holder {
                    label: Label::LockId(LockId::Big(-4774651977129594492)),
                    limit: 3,
                },
                "ci-runner-2",
            ),
            at(
                Kind::Holder {
                    label: Label::LockId(LockId::Pair(1, -2)),
                    limit: 1,
                },
                "h",
            ),
            at(Kind::Observer(Observer::Watch), "web-3"),
            at(Kind::Observer(Observer::Status), "wéird:host/@"),
            at(Kind::Observer(Observer::List), "web-3"),
        ];
        for name in names {
            let wire = name.encoded();
            assert!(wire.len() <= MAX_BYTES, "{wire}");
            assert!(wire.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{wire}");
            assert_eq!(AppName::parse(&wire), Some(name.clone()), "{wire}");
        }
    }

    #[test]
    fn escapes_what_the_server_would_mangle() {
        assert_eq!(key("déploy", 1).encoded(), "pglock:d%C3%A9ploy@web-3:48121");
        assert_eq!(key("#a@b", 1).encoded(), "pglock:%23a%40b@web-3:48121");
        assert_eq!(key("a#b", 1).encoded(), "pglock:a#b@web-3:48121");
        assert_eq!(key("déploy", 1).to_string(), "pglock:déploy@web-3:48121");
        assert_eq!(key("a\nb", 1).to_string(), "pglock:a\\nb@web-3:48121");
    }

    #[test]
    fn a_key_and_a_lock_id_read_differently() {
        let id = at(
            Kind::Holder {
                label: Label::LockId(LockId::Big(42)),
                limit: 1,
            },
            "h",
        );
        assert_eq!(id.encoded(), "pglock:#42@h:48121");
        assert_eq!(
            AppName::parse("pglock:42@h:1").unwrap().label(),
            Some(&Label::Key("42".into()))
        );
        assert_eq!(
            AppName::parse("pglock:#1,2@h:1").unwrap().label(),
            Some(&Label::LockId(LockId::Pair(1, 2)))
        );
        assert_eq!(Label::LockId(LockId::Big(42)).to_string(), "--lock-id 42");
        assert_eq!(Label::Key("42".into()).to_string(), "42");
        assert_eq!(Label::LockId(LockId::Pair(1, 2)).base(), "lock-id:1,2");
    }

    #[test]
    fn shortening_cuts_whole_characters_of_the_key_only() {
        for k in [
            "k".repeat(200),
            "é".repeat(100),
            "夜".repeat(40),
            "%".repeat(50),
        ] {
            let name = key(&k, 1024);
            let wire = name.encoded();
            assert!(wire.len() <= MAX_BYTES, "{wire}");
            assert!(wire.ends_with("@web-3:48121/1024"), "{wire}");
            let back = AppName::parse(&wire).expect(&wire);
            let Some(Label::Key(cut)) = back.label() else {
                panic!("{wire}")
            };
            assert!(!cut.is_empty() && k.starts_with(cut.as_str()), "{wire}");
            // Nothing more would have fit.
            assert!(wire.len() > MAX_BYTES - 9, "{wire}");
        }
    }

    #[test]
    fn a_long_host_leaves_room_for_the_label() {
        let long = "h".repeat(64);
        let name = at(
            Kind::Holder {
                label: Label::LockId(LockId::Big(i64::MIN)),
                limit: 1024,
            },
            &long,
        );
        let wire = name.encoded();
        assert!(wire.len() <= MAX_BYTES, "{wire}");
        let back = AppName::parse(&wire).unwrap();
        assert_eq!(back.label(), name.label());
        assert_eq!((back.pid, back.limit()), (48121, Some(1024)));
        assert!(
            long.starts_with(&back.host) && back.host.len() >= 16,
            "{wire}"
        );
        let wire = key("nightly-report", 1).encoded();
        assert!(wire.len() <= MAX_BYTES);
    }

    #[test]
    fn other_names_are_not_pglock() {
        for other in [
            "psql",
            "",
            "pglock:",
            "pglock:@h:1",
            "pglock:a@h:x",
            "pglock:a@h",
            "pglock:a%zz@h:1",
            "pglock:a%ff@h:1",
            "pglock:#x@h:1",
            "pglock:a@h:1/x",
            "pglock-other@h:1",
        ] {
            assert_eq!(AppName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn observers_keep_the_host_and_pid() {
        let holder = key("k", 1);
        let watch = holder.as_observer(Observer::Watch);
        assert_eq!(watch.encoded(), "pglock-watch@web-3:48121");
        assert_eq!(watch.label(), None);
        // The ledger's connections name no key: they hold no lock (as the README says).
        let ledger = holder.as_observer(Observer::Ledger);
        assert_eq!(ledger.encoded(), "pglock-ledger@web-3:48121");
        let here = AppName::observer(Observer::Status);
        assert_eq!(here.pid, std::process::id());
        assert!(here.encoded().starts_with("pglock-status@"));
    }
}
