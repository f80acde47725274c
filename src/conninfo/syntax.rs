//! libpq's two connection-string syntaxes, URL and key=value, into [`Options`]. Messages never
//! quote a value that could be part of a password.

use super::{Options, Source, lookup, usage};
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
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let ws = |c: char| c.is_ascii_whitespace();
    let mut opts = Options::default();
    let mut after_bare_password = false;
    let mut i = 0;
    while i < n {
        if ws(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let mut name = String::new();
        while i < n && chars[i] != '=' && !ws(chars[i]) {
            name.push(chars[i]);
            i += 1;
        }
        while i < n && ws(chars[i]) {
            i += 1;
        }
        if i >= n || chars[i] != '=' {
            // The word is not shown: it may be the second half of a password with a space.
            return Err(usage(format!(
                "invalid connection string: missing \"=\" after the word at character {}; \
                 write key=value pairs and put values that contain spaces in single quotes",
                start + 1
            )));
        }
        i += 1;
        while i < n && ws(chars[i]) {
            i += 1;
        }
        let mut value = String::new();
        let quoted = i < n && chars[i] == '\'';
        if quoted {
            i += 1;
            loop {
                if i >= n {
                    return Err(usage(
                        "invalid connection string: a quoted value has no closing quote",
                    ));
                }
                match chars[i] {
                    '\\' => {
                        i += 1;
                        if i < n {
                            value.push(chars[i]);
                            i += 1;
                        }
                    }
                    '\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < n && !ws(chars[i]) {
                if chars[i] == '\\' {
                    i += 1;
                }
                if i < n {
                    value.push(chars[i]);
                    i += 1;
                }
            }
        }
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
    fn set(opts: &mut Options, key: &'static str, raw: &str, part: &str) -> Result<()> {
        let value = percent_decode(raw, part)?;
        opts.0.insert(key, (value, Source::String));
        Ok(())
    }
    let bad = |what: String| usage(format!("invalid connection URL: {what}"));

    // Credentials end at the first '@' before the path, as libpq reads them.
    let mut p = rest;
    if let Some(at) = p.find(['@', '/']).filter(|&i| p.as_bytes()[i] == b'@') {
        let creds = &p[..at];
        let (user, password) = match creds.split_once(':') {
            Some((u, pw)) => (u, Some(pw)),
            None => (creds, None),
        };
        if !user.is_empty() {
            set(&mut opts, "user", user, "user name")?;
        }
        if let Some(pw) = password.filter(|pw| !pw.is_empty()) {
            set(&mut opts, "password", pw, "password")?;
        }
        p = &p[at + 1..];
    }

    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    let mut any_port = false;
    let terminator;
    loop {
        let host;
        if let Some(after) = p.strip_prefix('[') {
            let close = after
                .find(']')
                .ok_or_else(|| bad("an IPv6 address has no closing \"]\"".into()))?;
            host = &after[..close];
            if host.is_empty() {
                return Err(bad("an IPv6 address is empty".into()));
            }
            p = &after[close + 1..];
            if !(p.is_empty() || p.starts_with([':', '/', '?', ','])) {
                return Err(bad(
                    "expected \":\", \"/\", \"?\" or \",\" after \"]\"".into()
                ));
            }
        } else {
            let end = p.find([':', '/', '?', ',']).unwrap_or(p.len());
            host = &p[..end];
            p = &p[end..];
        }
        if host.contains('@') {
            // A password with an unencoded '@' would otherwise show up as a host name.
            return Err(bad(
                "\"@\" in the host part; percent-encode \"@\" in a user name or password as %40"
                    .into(),
            ));
        }
        hosts.push(host);
        let mut port = "";
        if let Some(after) = p.strip_prefix(':') {
            let end = after.find(['/', '?', ',']).unwrap_or(after.len());
            port = &after[..end];
            any_port = true;
            p = &after[end..];
        }
        ports.push(port);
        match p.strip_prefix(',') {
            Some(after) => p = after,
            None => {
                terminator = p.chars().next();
                break;
            }
        }
    }
    let hosts = hosts.join(",");
    if !hosts.is_empty() {
        set(&mut opts, "host", &hosts, "host")?;
    }
    // libpq keeps the commas of a host list in the port list even without ports, so such a URL
    // overrides PGPORT with the default port.
    if any_port || ports.len() > 1 {
        set(&mut opts, "port", &ports.join(","), "port")?;
    }

    let mut query = None;
    if terminator == Some('/') {
        let path = &p[1..];
        let (db, q) = match path.split_once('?') {
            Some((db, q)) => (db, Some(q)),
            None => (path, None),
        };
        if db.contains('@') {
            // Most likely a password with an unencoded '/': the rest of it would show up as the
            // database name in messages.
            return Err(bad(
                "\"@\" after the host part; percent-encode \"/\" and \"@\" in a user \
                 name or password as %2F and %40"
                    .into(),
            ));
        }
        if !db.is_empty() {
            set(&mut opts, "dbname", db, "database name")?;
        }
        query = q;
    } else if terminator == Some('?') {
        query = Some(&p[1..]);
    }

    if let Some(query) = query {
        let params: Vec<&str> = query.split('&').collect();
        for (n, param) in params.iter().enumerate() {
            if param.is_empty() && n == params.len() - 1 {
                break;
            }
            let Some((key, value)) = param.split_once('=') else {
                return Err(bad(format!("query parameter {} has no \"=\"", n + 1)));
            };
            if value.contains('=') {
                return Err(bad(format!("query parameter {} has a second \"=\"", n + 1)));
            }
            let key = percent_decode(key, "query parameter name")?;
            if key == "ssl" {
                // libpq's JDBC-compatible alias.
                if percent_decode(value, "ssl parameter")? != "true" {
                    return Err(bad("the ssl parameter takes only \"true\"".into()));
                }
                opts.0.insert("sslmode", ("require".into(), Source::String));
                continue;
            }
            let Some(k) = lookup(&key) else {
                return Err(usage(format!(
                    "unknown parameter \"{key}\" in the connection URL; check its spelling \
                     against libpq's keywords (host, port, dbname, user, sslmode, ...)"
                )));
            };
            let part = if k.key == "password" {
                "password"
            } else {
                "query parameter value"
            };
            set(&mut opts, k.key, value, part)?;
        }
    }
    Ok(opts)
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
