//! The ledger table's name: `--ledger [SCHEMA.]TABLE`, checked once on the command line and then
//! only ever written into SQL as double-quoted identifiers.
//!
//! Names are restricted to what PostgreSQL accepts unquoted (letters, digits, underscores; not
//! starting with a digit; at most 63 bytes) and folded to lower case as the server folds them,
//! so `--ledger Ops.Runs` means the table psql calls `ops.runs`. Quoting them anyway keeps a
//! reserved word (`--ledger public.user`) working. An unqualified name lives in `public`: the
//! ledger is never looked up through search_path, which anyone with CREATE on an earlier schema
//! could hijack.

use sha2::{Digest, Sha256};
use std::fmt;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

/// The default ledger table.
pub const DEFAULT: &str = "public.pglock_runs";

/// A checked, schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
}

impl Table {
    /// Parses `TABLE` or `SCHEMA.TABLE` (clap's value parser for --ledger).
    pub fn parse(text: &str) -> Result<Table, String> {
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (schema, name),
            None => ("public", text),
        };
        Ok(Table {
            schema: identifier(schema, text)?,
            name: identifier(name, text)?,
        })
    }

    /// `"schema"."name"`, for SQL.
    pub fn quoted(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.name)
    }

    /// The schema alone, quoted, for GRANT USAGE.
    pub fn quoted_schema(&self) -> String {
        format!("\"{}\"", self.schema)
    }

    /// An index name derived from the table's: `<table>_<suffix>` when that fits in an
    /// identifier, else the table's name cut short, 8 hex digits of its SHA-256 and the suffix,
    /// so that two long names in one schema never share index names (the server would not
    /// complain: `CREATE INDEX IF NOT EXISTS` would skip the second table's indexes). Indexes
    /// live in the table's schema, so the same table name in two schemas cannot clash.
    pub fn index(&self, suffix: &str) -> String {
        let whole = format!("{}_{suffix}", self.name);
        if whole.len() <= MAX_IDENT {
            return format!("\"{whole}\"");
        }
        let digest = Sha256::digest(self.name.as_bytes());
        let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        // The name is ASCII (checked by `identifier`), so any byte is a character boundary.
        let room = MAX_IDENT - suffix.len() - hash.len() - 2;
        format!("\"{}_{hash}_{suffix}\"", &self.name[..room])
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// One identifier, folded to lower case; `whole` is the argument, for the message.
fn identifier(part: &str, whole: &str) -> Result<String, String> {
    let hint = "use [SCHEMA.]TABLE with letters, digits and underscores, e.g. ops.pglock_runs";
    let starts_well = part
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !starts_well || !rest_ok {
        return Err(format!("'{whole}' is not a table name: {hint}"));
    }
    if part.len() > MAX_IDENT {
        return Err(format!(
            "'{part}' is longer than PostgreSQL's {MAX_IDENT}-byte limit for names"
        ));
    }
    Ok(part.to_ascii_lowercase())
}

/// `name` as a double-quoted SQL identifier (a role for GRANT), any text: inner quotes doubled.
/// A NUL cannot be sent to the server at all, so it is refused.
pub fn quote_ident(name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains('\0') {
        return Err(format!("'{}' is not a role name", name.escape_debug()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_qualified_folded_and_quoted() {
        let t = Table::parse("pglock_runs").unwrap();
        assert_eq!(t.quoted(), "\"public\".\"pglock_runs\"");
        assert_eq!(t.to_string(), "public.pglock_runs");
        let t = Table::parse("Ops.Runs_2").unwrap();
        assert_eq!(t.quoted(), "\"ops\".\"runs_2\"");
        assert_eq!(t.quoted_schema(), "\"ops\"");
        assert_eq!(
            Table::parse("public.user").unwrap().quoted(),
            "\"public\".\"user\""
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            ".",
            "a.",
            ".b",
            "a.b.c",
            "1runs",
            "runs; DROP TABLE x",
            "\"runs\"",
            "runs\"--",
            "a b",
            "rüns",
            "runs'",
        ] {
            assert!(Table::parse(bad).is_err(), "{bad}");
        }
        assert!(Table::parse(&"a".repeat(64)).is_err());
        assert!(Table::parse(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn index_names_fit() {
        let long = Table::parse(&"r".repeat(63)).unwrap();
        let index = long.index("key_started");
        assert_eq!(index.len(), 63 + 2, "{index}");
        assert!(index.ends_with("_key_started\""));
        // Two long names alike in their first 62 bytes: their index names differ.
        let other = Table::parse(&format!("{}s", "r".repeat(62))).unwrap();
        assert_ne!(other.index("key_started"), index);
        let fits = Table::parse(&"r".repeat(51)).unwrap();
        assert_eq!(
            fits.index("started"),
            format!("\"{}_started\"", "r".repeat(51))
        );
        assert_eq!(
            Table::parse("x.runs").unwrap().index("running"),
            "\"runs_running\""
        );
    }

    #[test]
    fn role_names_are_quoted() {
        assert_eq!(quote_ident("runner").unwrap(), "\"runner\"");
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_ident("Mixed Case").unwrap(), "\"Mixed Case\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
    }
}
