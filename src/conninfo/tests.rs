//! Resolving connection settings end to end, without a server: precedence, hosts, files, TLS
//! policy and the usage errors.

use super::build::os_user;
use super::hosts::default_socket_dir;
use super::*;
use crate::tls::Check;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::config::{LoadBalanceHosts, SslMode as PgSslMode, TargetSessionAttrs};

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let map: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
    move |k: &str| map.get(k).cloned().filter(|v| !v.is_empty())
}

/// An environment with no PG* variables and a home without libpq files.
fn bare() -> Vec<(&'static str, &'static str)> {
    vec![
        ("HOME", "/nonexistent-home"),
        ("PGSYSCONFDIR", "/nonexistent-sysconf"),
    ]
}

fn resolve_with(conninfo: Option<&str>, vars: &[(&str, &str)]) -> Result<Target> {
    let env = env_of(vars);
    resolve(conninfo, &env)
}

fn message(err: anyhow::Error) -> (u8, String) {
    (crate::exit::code_for(&err), crate::exit::message(&err))
}

fn usage_error(conninfo: Option<&str>, vars: &[(&str, &str)]) -> String {
    match resolve_with(conninfo, vars) {
        Ok(t) => panic!("expected a usage error, got {}", t.describe),
        Err(e) => {
            let (code, msg) = message(e);
            assert_eq!(code, crate::exit::USAGE, "{msg}");
            assert!(!msg.starts_with("pglock:"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
            msg
        }
    }
}

fn tcp(config: &Config) -> Vec<(String, u16)> {
    config
        .get_hosts()
        .iter()
        .zip(config.get_ports())
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => (h.clone(), *p),
            tokio_postgres::config::Host::Unix(d) => (d.display().to_string(), *p),
        })
        .collect()
}

#[test]
fn bad_strings_are_usage_errors_without_secrets() {
    for (text, expect) in [
        (
            "host=db1 colour=blue",
            "unknown connection option \"colour\"",
        ),
        (
            "postgresql://h/db?colour=blue",
            "unknown parameter \"colour\"",
        ),
        (
            "postgresql://h/db?sslmode",
            "query parameter 1 has no \"=\"",
        ),
        ("postgresql://[::1/db", "no closing \"]\""),
        ("host='db1", "no closing quote"),
        ("justaword", "postgresql:// URL or key=value"),
        (
            "postgresql://u:s3cr%zzX9q@h/db",
            "percent-encoding in the password",
        ),
        ("postgresql://u:s3cr@X9q@h/db", "percent-encode \"@\""),
        ("postgresql://u:12/s3crX9q@h/db", "percent-encode \"/\""),
        (
            "password=s3cr X9q host=h",
            "missing \"=\" after the word at character",
        ),
        (
            "password=s3cr X9q=x host=h",
            "unknown option after the password",
        ),
        ("host=h port=54x", "invalid port number \"54x\""),
        (
            "host=a,b,c port=1,2",
            "could not match 2 port numbers to 3 hosts",
        ),
        ("hostaddr=db1", "invalid hostaddr \"db1\""),
        (
            "host=a connect_timeout=soon",
            "connect_timeout in the connection string",
        ),
        (
            "host=a sslmode=verify",
            "invalid value \"verify\" for sslmode",
        ),
        ("host=a sslcrl=/x.crl", "does not support sslcrl"),
        (
            "host=a gssencmode=require",
            "does not support gssencmode=require",
        ),
        (
            "host=a target_session_attrs=standby",
            "target_session_attrs=standby (from target_session_attrs in the connection string) \
             would take the lock on a standby, where advisory locks protect nothing",
        ),
        (
            "host=a sslrootcert=system sslmode=require",
            "needs sslmode=verify-full",
        ),
        ("host=a sslmode=verify-ca", "does not exist"),
        ("host=a service=nosuch", "unknown service \"nosuch\""),
    ] {
        let msg = usage_error(Some(text), &bare());
        assert!(msg.contains(expect), "{text}: {msg}");
        assert!(!msg.contains("s3cr"), "{text}: {msg}");
        assert!(!msg.contains("X9q"), "{text}: {msg}");
    }
    let msg = usage_error(None, &[("PGSSLCRL", "/x.crl"), ("HOME", "/nonexistent")]);
    assert!(msg.contains("set by PGSSLCRL"), "{msg}");
}

#[test]
fn defaults() {
    let t = resolve_with(None, &bare()).unwrap();
    let me = os_user();
    assert_eq!(t.config.get_user(), Some(me.as_str()));
    assert_eq!(t.config.get_dbname(), Some(me.as_str()));
    assert_eq!(t.config.get_ports(), &[5432]);
    assert!(matches!(
        t.config.get_hosts()[0],
        tokio_postgres::config::Host::Unix(_)
    ));
    assert_eq!(
        t.config.get_target_session_attrs(),
        TargetSessionAttrs::ReadWrite
    );
    // Sockets never use TLS, so no TLS context is built.
    assert_eq!(t.verify.check, Check::Disabled);
    assert_eq!(t.config.get_ssl_mode(), PgSslMode::Disable);
    assert!(!t.password_on_command_line);
    assert!(t.describe.ends_with(&format!(".s.PGSQL.5432/{me} as {me}")));
}

#[test]
fn string_beats_environment_and_environment_beats_defaults() {
    let mut vars = bare();
    vars.extend([
        ("PGHOST", "envhost"),
        ("PGPORT", "6001"),
        ("PGUSER", "envuser"),
        ("PGDATABASE", "envdb"),
        ("PGPASSWORD", "envpw"),
        ("PGSSLMODE", "require"),
        ("PGCONNECT_TIMEOUT", "1"),
        ("PGTARGETSESSIONATTRS", "any"),
    ]);
    let t = resolve_with(Some("host=strhost user=struser"), &vars).unwrap();
    assert_eq!(tcp(&t.config), vec![("strhost".into(), 6001)]);
    assert_eq!(t.config.get_user(), Some("struser"));
    assert_eq!(t.config.get_dbname(), Some("envdb"));
    assert_eq!(t.config.get_password(), Some(&b"envpw"[..]));
    assert_eq!(t.config.get_ssl_mode(), PgSslMode::Require);
    assert_eq!(t.verify.check, Check::Nothing);
    assert_eq!(
        t.config.get_connect_timeout(),
        Some(&Duration::from_secs(2))
    );
    assert_eq!(t.config.get_target_session_attrs(), TargetSessionAttrs::Any);
    assert_eq!(t.describe, "strhost:6001/envdb as struser");
    // The environment's password is not on the command line.
    assert!(!t.password_on_command_line);
}

#[test]
fn password_on_command_line_only_for_dash_d() {
    let url = "postgresql://u:pw@h/db";
    let t = resolve_with(Some(url), &bare()).unwrap();
    assert!(t.password_on_command_line);
    assert!(!t.describe.contains("pw"), "{}", t.describe);
    let mut vars = bare();
    vars.push(("PGLOCK_DATABASE_URL", url));
    let t = resolve_with(Some(url), &vars).unwrap();
    assert!(!t.password_on_command_line);
    let t = resolve_with(Some("host=h user=u"), &bare()).unwrap();
    assert!(!t.password_on_command_line);
}

#[test]
fn hosts_ports_and_sockets() {
    let t = resolve_with(Some("host=a,/run/pg,,b port=1,2,3,4"), &bare()).unwrap();
    let hosts = tcp(&t.config);
    assert_eq!(hosts[0], ("a".into(), 1));
    assert_eq!(hosts[1], ("/run/pg".into(), 2));
    assert_eq!(hosts[2], (default_socket_dir().display().to_string(), 3));
    assert_eq!(hosts[3], ("b".into(), 4));
    // One port applies to every host.
    let t = resolve_with(Some("host=a,b port=7"), &bare()).unwrap();
    assert_eq!(t.config.get_ports(), &[7, 7]);
    // hostaddr: connect to the address, keep the name for TLS and the password file.
    let t = resolve_with(Some("host=db1 hostaddr=10.1.2.3"), &bare()).unwrap();
    assert_eq!(tcp(&t.config), vec![("db1".into(), 5432)]);
    assert_eq!(
        t.config.get_hostaddrs(),
        &["10.1.2.3".parse::<IpAddr>().unwrap()]
    );
    let t = resolve_with(Some("hostaddr=::1"), &bare()).unwrap();
    assert_eq!(t.describe, format!("[::1]:5432/{0} as {0}", os_user()));
    let t = resolve_with(Some("host=a,b load_balance_hosts=random"), &bare()).unwrap();
    assert_eq!(t.config.get_load_balance_hosts(), LoadBalanceHosts::Random);
    let t = resolve_with(Some("host=a tcp_user_timeout=500"), &bare()).unwrap();
    assert_eq!(
        t.config.get_tcp_user_timeout(),
        Some(&Duration::from_millis(500))
    );
}

#[test]
fn keepalive_keys_are_checked_then_left_to_check_interval() {
    let defaults = Config::new();
    let t = resolve_with(
        Some("host=a keepalives=0 keepalives_idle=30 keepalives_interval=7 keepalives_count=9"),
        &bare(),
    )
    .unwrap();
    assert_eq!(t.config.get_keepalives(), defaults.get_keepalives());
    assert_eq!(
        t.config.get_keepalives_idle(),
        defaults.get_keepalives_idle()
    );
    let msg = usage_error(Some("host=a keepalives_idle=soon"), &bare());
    assert!(
        msg.contains("keepalives_idle in the connection string"),
        "{msg}"
    );
}

#[test]
fn a_tcp_user_timeout_the_kernel_refuses_is_a_usage_error() {
    let msg = usage_error(Some("host=a tcp_user_timeout=2147483648"), &bare());
    assert!(msg.contains("at most 2147483647 milliseconds"), "{msg}");
    let t = resolve_with(Some("host=a tcp_user_timeout=2147483647"), &bare()).unwrap();
    assert_eq!(
        t.config.get_tcp_user_timeout(),
        Some(&Duration::from_millis(2147483647))
    );
}

/// Issue 23, item 9: a connect_timeout of twenty digits overflowed the connect's deadline.
#[test]
fn a_connect_timeout_beyond_the_longest_duration_is_a_usage_error() {
    let huge = "9223372036854775807";
    for (conninfo, vars, named) in [
        (None, vec![("PGCONNECT_TIMEOUT", huge)], "PGCONNECT_TIMEOUT"),
        (
            Some(format!("host=a connect_timeout={huge}")),
            vec![],
            "connect_timeout",
        ),
        (
            Some(format!("postgresql://a/?connect_timeout={huge}")),
            vec![],
            "connect_timeout",
        ),
        (
            Some("host=a connect_timeout=315360001".into()),
            vec![],
            "connect_timeout",
        ),
    ] {
        let vars = [bare(), vars].concat();
        let msg = usage_error(conninfo.as_deref(), &vars);
        assert!(msg.contains(named), "{msg}");
        assert!(msg.contains("at most 315360000 seconds, 3650d"), "{msg}");
    }
    let t = resolve_with(Some("host=a connect_timeout=315360000"), &bare()).unwrap();
    assert_eq!(
        t.config.get_connect_timeout(),
        Some(&Duration::from_secs(315360000))
    );
}

#[test]
fn a_variable_that_is_not_utf8_is_a_usage_error_naming_it() {
    use std::os::unix::ffi::OsStrExt;
    let junk = || Some(OsStr::from_bytes(b"db\xff").to_os_string());
    for name in ["PGHOST", "PGUSER", "PGSERVICE", "PGSSLMODE", "PGPASSWORD"] {
        let env = |k: &str| {
            if k == name {
                junk()
            } else {
                env_of(&bare())(k)
            }
        };
        let err = resolve(None, &env).err().expect(name);
        let (code, msg) = message(err);
        assert_eq!(code, crate::exit::USAGE, "{msg}");
        assert!(
            msg.contains(name) && msg.contains("not valid UTF-8"),
            "{msg}"
        );
    }
    // Paths are bytes, and a variable the string overrides is never read.
    let env = |k: &str| match k {
        "HOME" | "PGSERVICEFILE" | "PGSYSCONFDIR" | "PGHOST" => junk(),
        _ => None,
    };
    let t = resolve(Some("host=h"), &env).unwrap();
    assert_eq!(t.describe, format!("h:5432/{0} as {0}", os_user()));
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pglock-unit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn password_file_rules() {
    let text = "\
# comment
db1:5432:app:alice:first
db1:5432:app:alice:second
db\\:x:*:*:bob:esc\\:aped\\\\pw:trailing
localhost:5433:*:carol:viasocket
*:*:*:dave:wild
";
    let dir = temp("pgpass");
    let file = write(&dir, "pgpass", text, 0o600);
    let file = file.to_str().unwrap();
    // The default socket directory counts as localhost; the port is the one written.
    let vars = [("HOME", "/nonexistent"), ("PGPASSFILE", file)];
    let t = resolve_with(Some("host=/var/run/postgresql port=5433 user=carol"), &vars).unwrap();
    assert_eq!(t.config.get_password(), Some(&b"viasocket"[..]));
    let t = resolve_with(Some("host=/elsewhere port=5433 user=carol"), &vars).unwrap();
    assert_eq!(t.config.get_password(), None);
    // passfile= in the string beats PGPASSFILE.
    let other = write(&dir, "other", "*:*:*:carol:fromother\n", 0o600);
    let s = format!("host=h user=carol passfile={}", other.display());
    let t = resolve_with(Some(&s), &vars).unwrap();
    assert_eq!(t.config.get_password(), Some(&b"fromother"[..]));
    // An explicit password wins over the file.
    let t = resolve_with(Some("host=h user=dave password=given"), &vars).unwrap();
    assert_eq!(t.config.get_password(), Some(&b"given"[..]));
    // ~/.pgpass by default.
    write(&dir, ".pgpass", "*:*:*:erin:home\n", 0o600);
    let home = [("HOME", dir.to_str().unwrap())];
    let t = resolve_with(Some("host=h user=erin"), &home).unwrap();
    assert_eq!(t.config.get_password(), Some(&b"home"[..]));
    // Group-readable: ignored.
    write(&dir, ".pgpass", "*:*:*:erin:home\n", 0o640);
    let t = resolve_with(Some("host=h user=erin"), &home).unwrap();
    assert_eq!(t.config.get_password(), None);
    // Different passwords for the hosts of one list cannot be sent.
    let split = write(&dir, "split", "a:*:*:*:Qa1\nb:*:*:*:Qb2\n", 0o600);
    let s = format!("host=a,b passfile={}", split.display());
    let msg = usage_error(Some(&s), &bare());
    assert!(msg.contains("different passwords"), "{msg}");
    assert!(!msg.contains("Qa1") && !msg.contains("Qb2"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn service_files() {
    let dir = temp("service");
    let user_file = write(
        &dir,
        "user.conf",
        "# mine\n[other]\nport=1\n[app]\n  host=svchost  \nport=6000\ndbname=svcdb\n[later]\nport=2\n",
        0o644,
    );
    std::fs::create_dir_all(dir.join("sys")).unwrap();
    write(
        &dir.join("sys"),
        "pg_service.conf",
        "[sys]\nhost=syshost\nuser=sysuser\n",
        0o644,
    );
    let uf = user_file.to_str().unwrap();
    let sys = dir.join("sys");
    let sys = sys.to_str().unwrap();
    let base = [
        ("HOME", "/nonexistent"),
        ("PGSERVICEFILE", uf),
        ("PGSYSCONFDIR", sys),
        ("PGDATABASE", "envdb"),
        ("PGPORT", "7000"),
    ];
    // The service beats the environment, the string beats the service.
    let t = resolve_with(Some("service=app port=6500"), &base).unwrap();
    assert_eq!(tcp(&t.config), vec![("svchost".into(), 6500)]);
    assert_eq!(t.config.get_dbname(), Some("svcdb"));
    // PGSERVICE selects it too.
    let mut vars = base.to_vec();
    vars.push(("PGSERVICE", "app"));
    let t = resolve_with(None, &vars).unwrap();
    assert_eq!(tcp(&t.config), vec![("svchost".into(), 6000)]);
    // Not in the user file: the system file.
    let t = resolve_with(Some("service=sys"), &base).unwrap();
    assert_eq!(tcp(&t.config), vec![("syshost".into(), 7000)]);
    assert_eq!(t.config.get_user(), Some("sysuser"));
    assert_eq!(t.config.get_dbname(), Some("envdb"));
    // ~/.pg_service.conf without PGSERVICEFILE.
    write(&dir, ".pg_service.conf", "[home]\nhost=homehost\n", 0o644);
    let t = resolve_with(
        Some("service=home"),
        &[("HOME", dir.to_str().unwrap()), ("PGSYSCONFDIR", sys)],
    )
    .unwrap();
    assert_eq!(tcp(&t.config)[0].0, "homehost");

    let msg = usage_error(Some("service=nosuch"), &base);
    assert!(msg.contains(uf) && msg.contains(sys), "{msg}");
    let bad = write(&dir, "bad.conf", "[s]\nhost = x\n", 0o644);
    let msg = usage_error(
        Some("service=s"),
        &[
            ("PGSERVICEFILE", bad.to_str().unwrap()),
            ("HOME", "/nonexistent"),
        ],
    );
    assert!(
        msg.contains("unknown option \"host \"") && msg.contains("line 2"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tls_modes() {
    let dir = temp("tls");
    let ca = dir.join("missing-ca.crt");
    let home = [("HOME", dir.to_str().unwrap())];
    let check =
        |s: &str| resolve_with(Some(s), &home).map(|t| (t.verify.check, t.config.get_ssl_mode()));
    assert_eq!(
        check("host=h").unwrap(),
        (Check::Nothing, PgSslMode::Prefer)
    );
    assert_eq!(
        check("host=h sslmode=allow").unwrap(),
        (Check::Nothing, PgSslMode::Prefer)
    );
    assert_eq!(
        check("host=h sslmode=disable").unwrap(),
        (Check::Disabled, PgSslMode::Disable)
    );
    assert_eq!(
        check("host=h sslmode=require").unwrap(),
        (Check::Nothing, PgSslMode::Require)
    );
    assert_eq!(
        check("host=h sslrootcert=system").unwrap(),
        (Check::Full, PgSslMode::Require)
    );
    // sslmode is ignored on sockets, as libpq does.
    assert_eq!(
        check("host=/tmp sslmode=verify-full").unwrap(),
        (Check::Disabled, PgSslMode::Disable)
    );
    let s = format!("host=h sslmode=verify-ca sslrootcert={}", ca.display());
    let err = message(check(&s).unwrap_err());
    assert_eq!(err.0, crate::exit::USAGE);
    assert!(
        err.1.contains("missing-ca.crt\" does not exist"),
        "{}",
        err.1
    );
    assert!(err.1.contains("sslrootcert=system"), "{}", err.1);
    std::fs::remove_dir_all(&dir).unwrap();
}
