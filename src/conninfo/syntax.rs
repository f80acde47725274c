//! libpq's two connection-string syntaxes, URL and key=value, into [`Options`]. Messages never
//! quote a value that could be part of a password.

use super::known::lookup;
use super::{Options, Source, usage};
use anyhow::Result;

pub(super) fn parse(text: &str) -> Result<Options> {
    for prefix in ["postgresql://", "postgres://"] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return parse_url(rest);
        }
    }
    if !text.contains('=') {
        // Never echo the string: it may be a mistyped URL with a password in it.
        return Err(usage(
            "invalid connection string: give a postgresql:// URL or key=value pairs \
             (e.g. \"host=db1 dbname=app\")",
        ));
    }
    parse_pairs(text)
}

/// libpq's key=value syntax: whitespace around `=` allowed, values in single quotes may hold
/// spaces, and a backslash escapes the next character in quoted and unquoted values alike.
fn parse_pairs(text: &str) -> Result<Options> {
    let mut cursor = Cursor {
        chars: text.chars().collect(),
        at: 0,
    };
    let mut opts = Options::default();
    let mut after_bare_password = false;
    while let Some(start) = cursor.next_word() {
        let name = cursor.name();
        cursor.equals(start)?;
        let (value, quoted) = cursor.value()?;
        let Some(k) = lookup(&name) else {
            if after_bare_password {
                return Err(usage(
                    "invalid connection string: unknown option after the password; put a \
                     password that contains spaces in single quotes",
                ));
            }
            return Err(unknown_key(&name));
        };
        after_bare_password = k.key == "password" && !quoted;
        // The last occurrence wins, as in libpq.
        opts.0.insert(k.key, (value, Source::String));
    }
    Ok(opts)
}

/// A position in a key=value string.
struct Cursor {
    chars: Vec<char>,
    at: usize,
}

impl Cursor {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    /// Skips to the next word; its position, or None at the end.
    fn next_word(&mut self) -> Option<usize> {
        self.skip_spaces();
        (self.at < self.chars.len()).then_some(self.at)
    }

    /// A key: everything up to `=` or a space.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self
            .peek()
            .filter(|&c| c != '=' && !c.is_ascii_whitespace())
        {
            name.push(c);
            self.at += 1;
        }
        name
    }

    /// The `=` after the key that started at `start`, with spaces around it.
    fn equals(&mut self, start: usize) -> Result<()> {
        self.skip_spaces();
        if self.peek() != Some('=') {
            // The word is not shown: it may be the second half of a password with a space.
            return Err(usage(format!(
                "invalid connection string: missing \"=\" after the word at character {}; \
                 write key=value pairs and put values that contain spaces in single quotes",
                start + 1
            )));
        }
        self.at += 1;
        self.skip_spaces();
        Ok(())
    }

    /// A value, unescaped, and whether it was quoted.
    fn value(&mut self) -> Result<(String, bool)> {
        if self.peek() == Some('\'') {
            self.at += 1;
            return Ok((self.quoted()?, true));
        }
        let mut value = String::new();
        while let Some(c) = self.peek().filter(|c| !c.is_ascii_whitespace()) {
            self.at += 1;
            match c {
                '\\' => self.escaped(&mut value),
                c => value.push(c),
            }
        }
        Ok((value, false))
    }

    /// The rest of a quoted value, after its opening quote.
    fn quoted(&mut self) -> Result<String> {
        let mut value = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(usage(
                    "invalid connection string: a quoted value has no closing quote",
                ));
            };
            self.at += 1;
            match c {
                '\\' => self.escaped(&mut value),
                '\'' => return Ok(value),
                c => value.push(c),
            }
        }
    }

    /// The character after a backslash, if any.
    fn escaped(&mut self, value: &mut String) {
        if let Some(c) = self.peek() {
            value.push(c);
            self.at += 1;
        }
    }
}

fn unknown_key(name: &str) -> anyhow::Error {
    usage(format!(
        "unknown connection option \"{name}\"; check its spelling against libpq's keywords \
         (host, port, dbname, user, sslmode, ...)"
    ))
}

/// libpq's URL syntax:
/// `postgresql://[user[:password]@][host][:port][,host[:port]...][/dbname][?key=value&...]`.
/// Every part is percent-decoded; query parameters override the parts before them.
fn parse_url(rest: &str) -> Result<Options> {
    let mut opts = Options::default();
    let rest = credentials(&mut opts, rest)?;
    let (rest, terminator) = host_list(&mut opts, rest)?;
    let query = match terminator {
        Some('/') => database(&mut opts, &rest[1..])?,
        Some('?') => Some(&rest[1..]),
        _ => None,
    };
    if let Some(query) = query {
        parameters(&mut opts, query)?;
    }
    Ok(opts)
}

fn set(opts: &mut Options, key: &'static str, raw: &str, part: &str) -> Result<()> {
    let value = percent_decode(raw, part)?;
    opts.0.insert(key, (value, Source::String));
    Ok(())
}

fn bad_url(what: impl std::fmt::Display) -> anyhow::Error {
    usage(format!("invalid connection URL: {what}"))
}

/// `user[:password]@`, if present; returns the rest of the URL. Credentials end at the first
/// '@' before the path, as libpq reads them.
fn credentials<'a>(opts: &mut Options, url: &'a str) -> Result<&'a str> {
    let Some(at) = url.find(['@', '/']).filter(|&i| url.as_bytes()[i] == b'@') else {
        return Ok(url);
    };
    let creds = &url[..at];
    let (user, password) = match creds.split_once(':') {
        Some((u, pw)) => (u, Some(pw)),
        None => (creds, None),
    };
    if !user.is_empty() {
        set(opts, "user", user, "user name")?;
    }
    if let Some(pw) = password.filter(|pw| !pw.is_empty()) {
        set(opts, "password", pw, "password")?;
    }
    Ok(&url[at + 1..])
}

/// `host[:port],...`: sets host and port; returns the rest of the URL and its first character.
fn host_list<'a>(opts: &mut Options, url: &'a str) -> Result<(&'a str, Option<char>)> {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    let mut any_port = false;
    let mut p = url;
    loop {
        let (host, rest) = one_host(p)?;
        hosts.push(host);
        p = rest;
        let mut port = "";
        if let Some(after) = p.strip_prefix(':') {
            let end = after.find(['/', '?', ',']).unwrap_or(after.len());
            (port, p) = after.split_at(end);
            any_port = true;
        }
        ports.push(port);
        match p.strip_prefix(',') {
            Some(after) => p = after,
            None => break,
        }
    }
    let hosts = hosts.join(",");
    if !hosts.is_empty() {
        set(opts, "host", &hosts, "host")?;
    }
    // libpq keeps the commas of a host list in the port list even without ports, so such a URL
    // overrides PGPORT with the default port.
    if any_port || ports.len() > 1 {
        set(opts, "port", &ports.join(","), "port")?;
    }
    Ok((p, p.chars().next()))
}

/// One host of the list, a name or a bracketed IPv6 address; returns it and what follows.
fn one_host(p: &str) -> Result<(&str, &str)> {
    let (host, rest) = match p.strip_prefix('[') {
        Some(after) => {
            let close = after
                .find(']')
                .ok_or_else(|| bad_url("an IPv6 address has no closing \"]\""))?;
            let (host, rest) = (&after[..close], &after[close + 1..]);
            if host.is_empty() {
                return Err(bad_url("an IPv6 address is empty"));
            }
            if !(rest.is_empty() || rest.starts_with([':', '/', '?', ','])) {
                return Err(bad_url("expected \":\", \"/\", \"?\" or \",\" after \"]\""));
            }
            (host, rest)
        }
        None => p.split_at(p.find([':', '/', '?', ',']).unwrap_or(p.len())),
    };
    if host.contains('@') {
        // A password with an unencoded '@' would otherwise show up as a host name.
        return Err(bad_url(
            "\"@\" in the host part; percent-encode \"@\" in a user name or password as %40",
        ));
    }
    Ok((host, rest))
}

/// `dbname[?query]` after the host list's `/`: sets dbname; returns the query.
fn database<'a>(opts: &mut Options, path: &'a str) -> Result<Option<&'a str>> {
    let (db, query) = match path.split_once('?') {
        Some((db, q)) => (db, Some(q)),
        None => (path, None),
    };
    if db.contains('@') {
        // Most likely a password with an unencoded '/': the rest of it would show up as the
        // database name in messages.
        return Err(bad_url(
            "\"@\" after the host part; percent-encode \"/\" and \"@\" in a user name or \
             password as %2F and %40",
        ));
    }
    if !db.is_empty() {
        set(opts, "dbname", db, "database name")?;
    }
    Ok(query)
}

/// `key=value&...`; a trailing `&` is allowed.
fn parameters(opts: &mut Options, query: &str) -> Result<()> {
    let params: Vec<&str> = query.split('&').collect();
    for (n, param) in params.iter().enumerate() {
        if param.is_empty() && n == params.len() - 1 {
            break;
        }
        parameter(opts, n + 1, param)?;
    }
    Ok(())
}

/// The `n`th query parameter.
fn parameter(opts: &mut Options, n: usize, param: &str) -> Result<()> {
    let Some((key, value)) = param.split_once('=') else {
        return Err(bad_url(format!("query parameter {n} has no \"=\"")));
    };
    if value.contains('=') {
        return Err(bad_url(format!("query parameter {n} has a second \"=\"")));
    }
    let key = percent_decode(key, "query parameter name")?;
    if key == "ssl" {
        // libpq's JDBC-compatible alias.
        if percent_decode(value, "ssl parameter")? != "true" {
            return Err(bad_url("the ssl parameter takes only \"true\""));
        }
        opts.0.insert("sslmode", ("require".into(), Source::String));
        return Ok(());
    }
    let Some(k) = lookup(&key) else {
        return Err(usage(format!(
            "unknown parameter \"{key}\" in the connection URL; check its spelling against \
             libpq's keywords (host, port, dbname, user, sslmode, ...)"
        )));
    };
    let part = if k.key == "password" {
        "password"
    } else {
        "query parameter value"
    };
    set(opts, k.key, value, part)
}

/// Decodes %XX escapes. Messages name the part of the URL, never its text.
fn percent_decode(raw: &str, part: &str) -> Result<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(0) | None => {
                    return Err(usage(format!(
                        "invalid connection URL: bad percent-encoding in the {part}; write \"%\" \
                         as %25"
                    )));
                }
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        usage(format!(
            "invalid connection URL: the {part} is not UTF-8 once percent-decoded"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_syntax() {
        let opts = parse(
            "host = db1  port=5433 dbname='my db' password='it''s' user=a\\ b options='-c x=\\'y\\''",
        );
        // libpq reads 'it' then a new key "'s'"; that's an error, as in libpq.
        assert!(opts.is_err());
        let opts = parse(
            "host = db1  port=5433 dbname='my db' password='it\\'s' user=a\\ b \
             options='-c x=1'",
        )
        .unwrap();
        assert_eq!(opts.get("host"), Some("db1"));
        assert_eq!(opts.get("port"), Some("5433"));
        assert_eq!(opts.get("dbname"), Some("my db"));
        assert_eq!(opts.get("password"), Some("it's"));
        assert_eq!(opts.get("user"), Some("a b"));
        assert_eq!(opts.get("options"), Some("-c x=1"));
        // The last occurrence wins.
        assert_eq!(parse("port=1 port=2").unwrap().get("port"), Some("2"));
    }

    #[test]
    fn url_syntax() {
        let opts = parse("postgresql://al%40ice:p%3Aw%2F@db1:5433,[::1]:6000/my%20db?sslmode=require&connect_timeout=3").unwrap();
        assert_eq!(opts.get("user"), Some("al@ice"));
        assert_eq!(opts.get("password"), Some("p:w/"));
        assert_eq!(opts.get("host"), Some("db1,::1"));
        assert_eq!(opts.get("port"), Some("5433,6000"));
        assert_eq!(opts.get("dbname"), Some("my db"));
        assert_eq!(opts.get("sslmode"), Some("require"));
        assert_eq!(opts.get("connect_timeout"), Some("3"));

        let opts = parse("postgres:///app?host=/var/run/postgresql&port=5444").unwrap();
        assert_eq!(opts.get("host"), Some("/var/run/postgresql"));
        assert_eq!(opts.get("dbname"), Some("app"));
        assert_eq!(opts.get("port"), Some("5444"));

        let opts = parse("postgresql://%2Ftmp%2Fsock:5444/app?ssl=true").unwrap();
        assert_eq!(opts.get("host"), Some("/tmp/sock"));
        assert_eq!(opts.get("sslmode"), Some("require"));

        let opts = parse("postgresql://").unwrap();
        assert!(opts.0.is_empty());
        let opts = parse("postgresql://h?").unwrap();
        assert_eq!(opts.get("host"), Some("h"));
        // Only the second host has a port: the first gets the default.
        let opts = parse("postgresql://a,b:6000").unwrap();
        assert_eq!(opts.get("port"), Some(",6000"));
        let opts = parse("postgresql://a,b/db").unwrap();
        assert_eq!(opts.get("port"), Some(","));
    }
}
