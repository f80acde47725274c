//! Connecting like libpq, end to end: pglock against the real psql under the same environment,
//! password files, service files and connection strings (same user, database and server, or the
//! same failure); the multi-host rules; usage errors; and passwords kept out of every message.

use crate::util::cluster::{Cluster, Outcome, free_port, hold, psql, session, write};
use crate::util::*;
use postgres::Client;
use std::path::Path;
use std::process::{Command, Stdio};

/// Which server a session landed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// pg_virtualenv's server, from the PG* variables the tests run with.
    A,
    /// A second cluster of this test's own, so that taking a setting from the wrong place shows
    /// up as the wrong server rather than only as a failure.
    B,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Landed {
    On(String, String, Server),
    Failed,
}

struct Case {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
    conninfo: Option<&'static str>,
    /// Files relative to the case's directory, with their modes. `home/` is $HOME and `sys/` is
    /// PGSYSCONFDIR.
    files: &'static [(&'static str, &'static str, u32)],
    /// (user, database, server), or None for a failure.
    expect: Option<(&'static str, &'static str, Server)>,
    /// Something pglock's stderr must say.
    stderr: Option<&'static str>,
}

const SERVICE: &str = "\
# services for the test
[other]
port={PA}
[app]
host=127.0.0.1
port={PB}
user=alice_{S}
dbname=db1_{S}
password=alice-pw
";

fn cases() -> Vec<Case> {
    use Server::*;
    let case = |name, env, conninfo, files, expect| Case {
        name,
        env,
        conninfo,
        files,
        expect,
        stderr: None,
    };
    vec![
        case(
            "environment only",
            &[
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", "{PB}"),
                ("PGUSER", "alice_{S}"),
                ("PGPASSWORD", "alice-pw"),
                ("PGDATABASE", "db1_{S}"),
            ],
            None,
            &[],
            Some(("alice", "db1", B)),
        ),
        case(
            "key=value beats the environment",
            &[
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", "{PA}"),
                ("PGUSER", "bob_{S}"),
                ("PGPASSWORD", "alice-pw"),
                ("PGDATABASE", "db1_{S}"),
            ],
            Some("port={PB} user=alice_{S}"),
            &[],
            Some(("alice", "db1", B)),
        ),
        case(
            "URL beats the environment",
            &[
                ("PGPORT", "{PA}"),
                ("PGUSER", "bob_{S}"),
                ("PGDATABASE", "alice_{S}"),
            ],
            Some("postgresql://alice_{S}:alice-pw@127.0.0.1:{PB}/db1_{S}"),
            &[],
            Some(("alice", "db1", B)),
        ),
        case(
            "the database defaults to the user name",
            &[
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", "{PB}"),
                ("PGUSER", "alice_{S}"),
                ("PGPASSWORD", "alice-pw"),
            ],
            None,
            &[],
            Some(("alice", "alice", B)),
        ),
        case(
            "wrong password",
            &[("PGPASSWORD", "not-it")],
            Some("host=127.0.0.1 port={PB} user=alice_{S} dbname=db1_{S}"),
            &[],
            None,
        ),
        case(
            "unknown database",
            &[("PGPASSWORD", "alice-pw")],
            Some("host=127.0.0.1 port={PB} user=alice_{S} dbname=nosuch_{S}"),
            &[],
            None,
        ),
        case(
            "quoted password with a space, a quote and a backslash escape",
            &[],
            Some("host=127.0.0.1 port = {PB} user=carol_{S} dbname=db1_{S} password='c p\\'w'"),
            &[],
            Some(("carol", "db1", B)),
        ),
        case(
            "password file with \\: and \\\\ escapes",
            &[
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", "{PB}"),
                ("PGUSER", "bob_{S}"),
                ("PGDATABASE", "db1_{S}"),
                ("PGPASSFILE", "{DIR}/pgpass"),
            ],
            None,
            &[(
                "pgpass",
                "127.0.0.1:{PB}:db1_{S}:bob_{S}:b\\:o\\\\b\n",
                0o600,
            )],
            Some(("bob", "db1", B)),
        ),
        case(
            "password file: the first matching line wins (a wrong one)",
            ALICE_PASSFILE,
            None,
            &[(
                "pgpass",
                "*:*:*:alice_{S}:wrong\n127.0.0.1:{PB}:*:alice_{S}:alice-pw\n",
                0o600,
            )],
            None,
        ),
        case(
            "password file: the first matching line wins (the right one)",
            ALICE_PASSFILE,
            None,
            &[(
                "pgpass",
                "# comment\n127.0.0.1:{PB}:*:alice_{S}:alice-pw\n*:*:*:alice_{S}:wrong\n",
                0o600,
            )],
            Some(("alice", "db1", B)),
        ),
        case(
            "password file: the port must match",
            ALICE_PASSFILE,
            None,
            &[("pgpass", "127.0.0.1:{PA}:*:alice_{S}:alice-pw\n", 0o600)],
            None,
        ),
        Case {
            stderr: Some("chmod 0600"),
            ..case(
                "password file readable by the group is ignored",
                ALICE_PASSFILE,
                None,
                &[("pgpass", "*:*:*:alice_{S}:alice-pw\n", 0o640)],
                None,
            )
        },
        case(
            "~/.pgpass, where localhost matches the default socket directory",
            &[
                ("PGPORT", "{PB}"),
                ("PGUSER", "alice_{S}"),
                ("PGDATABASE", "db1_{S}"),
            ],
            None,
            &[(
                "home/.pgpass",
                "localhost:{PB}:db1_{S}:alice_{S}:alice-pw\n",
                0o600,
            )],
            Some(("alice", "db1", B)),
        ),
        case(
            "password file: localhost matches libpq's socket directory given explicitly",
            &[("PGPASSFILE", "{DIR}/pgpass")],
            Some("host=/var/run/postgresql port={PB} user=alice_{S} dbname=db1_{S}"),
            &[("pgpass", "localhost:{PB}:*:alice_{S}:alice-pw\n", 0o600)],
            Some(("alice", "db1", B)),
        ),
        case(
            "passfile= in the connection string",
            &[],
            Some("host=127.0.0.1 port={PB} user=alice_{S} dbname=db1_{S} passfile={DIR}/other"),
            &[("other", "127.0.0.1:*:*:*:alice-pw\n", 0o600)],
            Some(("alice", "db1", B)),
        ),
        case(
            "password file matched on host, not hostaddr",
            &[],
            Some(
                "host=localhost hostaddr=127.0.0.1 port={PB} user=alice_{S} dbname=db1_{S} passfile={DIR}/pgpass",
            ),
            &[(
                "pgpass",
                "127.0.0.1:*:*:*:wrong\nlocalhost:*:*:*:alice-pw\n",
                0o600,
            )],
            Some(("alice", "db1", B)),
        ),
        case(
            "PGHOSTADDR without a host name",
            &[
                ("PGHOSTADDR", "127.0.0.1"),
                ("PGPORT", "{PB}"),
                ("PGUSER", "alice_{S}"),
                ("PGDATABASE", "db1_{S}"),
                ("PGPASSFILE", "{DIR}/pgpass"),
            ],
            None,
            &[("pgpass", "127.0.0.1:{PB}:*:*:alice-pw\n", 0o600)],
            Some(("alice", "db1", B)),
        ),
        case(
            "a service beats the environment",
            &[
                ("PGSERVICEFILE", "{DIR}/services"),
                ("PGPORT", "{PA}"),
                ("PGDATABASE", "alice_{S}"),
            ],
            Some("service=app"),
            &[("services", SERVICE, 0o644)],
            Some(("alice", "db1", B)),
        ),
        case(
            "the connection string beats the service",
            &[("PGSERVICEFILE", "{DIR}/services")],
            Some("service=app port={PA}"),
            &[("services", SERVICE, 0o644)],
            Some(("alice", "db1", A)),
        ),
        case(
            "PGSERVICE names the service",
            &[("PGSERVICEFILE", "{DIR}/services"), ("PGSERVICE", "app")],
            None,
            &[("services", SERVICE, 0o644)],
            Some(("alice", "db1", B)),
        ),
        case(
            "~/.pg_service.conf",
            &[],
            Some("service=app"),
            &[("home/.pg_service.conf", SERVICE, 0o644)],
            Some(("alice", "db1", B)),
        ),
        case(
            "PGSYSCONFDIR/pg_service.conf when the user's file lacks the service",
            &[("PGSERVICEFILE", "{DIR}/services"), ("PGUSER", "carol_{S}")],
            Some("service=sys"),
            &[
                ("services", SERVICE, 0o644),
                (
                    "sys/pg_service.conf",
                    "[sys]\nhost=127.0.0.1\nport={PB}\ndbname=db1_{S}\npassword=c p'w\n",
                    0o644,
                ),
            ],
            Some(("carol", "db1", B)),
        ),
        Case {
            stderr: Some("unknown service \"nosuch\""),
            ..case(
                "unknown service",
                &[("PGSERVICEFILE", "{DIR}/services")],
                Some("service=nosuch"),
                &[("services", SERVICE, 0o644)],
                None,
            )
        },
        case(
            "several hosts: the first is dead",
            &[],
            Some("postgresql://alice_{S}:alice-pw@127.0.0.1:{DEAD},127.0.0.1:{PB}/db1_{S}"),
            &[],
            Some(("alice", "db1", B)),
        ),
        case(
            "several hosts in key=value form with matching ports",
            &[("PGPASSWORD", "alice-pw")],
            Some("host=127.0.0.1,localhost port={DEAD},{PA} user=alice_{S} dbname=db1_{S}"),
            &[],
            Some(("alice", "db1", A)),
        ),
        case(
            "percent-encoded socket directory in a URL",
            &[],
            Some(
                "postgresql://%2Fvar%2Frun%2Fpostgresql:{PB}/db1_{S}?user=alice_{S}&password=alice-pw",
            ),
            &[],
            Some(("alice", "db1", B)),
        ),
        case(
            "socket directory as a URL query parameter",
            &[("PGPASSWORD", "alice-pw")],
            Some("postgresql:///db1_{S}?host=/var/run/postgresql&port={PB}&user=alice_{S}"),
            &[],
            Some(("alice", "db1", B)),
        ),
    ]
}

const ALICE_PASSFILE: &[(&str, &str)] = &[
    ("PGHOST", "127.0.0.1"),
    ("PGPORT", "{PB}"),
    ("PGUSER", "alice_{S}"),
    ("PGDATABASE", "db1_{S}"),
    ("PGPASSFILE", "{DIR}/pgpass"),
];

struct Vars {
    a: u16,
    b: u16,
    dead: u16,
    suffix: String,
}

impl Vars {
    fn fill(&self, text: &str, dir: &Path) -> String {
        text.replace("{PA}", &self.a.to_string())
            .replace("{PB}", &self.b.to_string())
            .replace("{DEAD}", &self.dead.to_string())
            .replace("{S}", &self.suffix)
            .replace("{DIR}", dir.to_str().unwrap())
    }
}

/// A clean environment for one case: no PG* variables but the case's, and a home and system
/// configuration directory of its own.
fn case_env(dir: &Path, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), std::env::var("PATH").unwrap()),
        ("LC_ALL".into(), "C".into()),
        ("HOME".into(), dir.join("home").display().to_string()),
        ("PGSYSCONFDIR".into(), dir.join("sys").display().to_string()),
    ];
    env.extend(extra.iter().cloned());
    env
}

fn via_psql(env: &[(String, String)], conninfo: Option<&str>, vars: &Vars) -> Landed {
    let mut cmd = Command::new(psql());
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["-X", "-w", "-A", "-t", "-c"])
        .arg("SELECT current_user, current_database(), current_setting('port')")
        .stdin(Stdio::null());
    if let Some(c) = conninfo {
        cmd.args(["-d", c]);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Landed::Failed;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = text.trim().split('|').collect();
    let port: u16 = fields[2].parse().unwrap();
    let server = if port == vars.a {
        Server::A
    } else {
        assert_eq!(port, vars.b, "psql reached an unexpected server");
        Server::B
    };
    Landed::On(fields[0].into(), fields[1].into(), server)
}

fn via_pglock(
    env: &[(String, String)],
    conninfo: Option<&str>,
    a: &mut Client,
    b: &mut Client,
) -> (Landed, String) {
    let mut cmd = pglock();
    cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(c) = conninfo {
        cmd.args(["-d", c]);
    }
    let key = unique_key("conn");
    match hold(cmd, &key) {
        Outcome::Held(held) => {
            let on_a = session(a, &key);
            let on_b = session(b, &key);
            let landed = match (on_a, on_b) {
                (Some(s), None) => Landed::On(s.user, s.database, Server::A),
                (None, Some(s)) => Landed::On(s.user, s.database, Server::B),
                other => panic!("pglock's session is not on exactly one server: {other:?}"),
            };
            assert!(held.release().success());
            (landed, String::new())
        }
        Outcome::Failed { code, stderr } => {
            assert!(
                matches!(code, Some(2) | Some(69)),
                "pglock failed with {code:?}: {stderr}"
            );
            (Landed::Failed, stderr)
        }
    }
}

/// Roles and databases of the differential test, on both servers.
fn create_fixtures(client: &mut Client, s: &str) {
    client
        .batch_execute(&format!(
            "CREATE ROLE alice_{s} LOGIN PASSWORD 'alice-pw';
             CREATE ROLE bob_{s} LOGIN PASSWORD 'b:o\\b';
             CREATE ROLE carol_{s} LOGIN PASSWORD 'c p''w';"
        ))
        .unwrap();
    for db in ["db1", "alice"] {
        client
            .batch_execute(&format!("CREATE DATABASE {db}_{s}"))
            .unwrap();
    }
}

/// Removes the fixtures from pg_virtualenv's server, which other tests share.
struct Fixtures {
    suffix: String,
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        let s = &self.suffix;
        let mut a = sql();
        let _ = a.batch_execute(&format!(
            "DROP DATABASE IF EXISTS db1_{s} WITH (FORCE);
             DROP DATABASE IF EXISTS alice_{s} WITH (FORCE);
             DROP ROLE IF EXISTS alice_{s}, bob_{s}, carol_{s};"
        ));
    }
}

#[test]
fn same_server_user_and_database_as_psql() {
    let hba = "\
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
";
    let b_cluster = Cluster::start("conn", &[], hba, |_| {});
    let suffix = std::process::id().to_string();
    let mut a = sql();
    let mut b = b_cluster.client();
    let _fixtures = Fixtures {
        suffix: suffix.clone(),
    };
    create_fixtures(&mut a, &suffix);
    create_fixtures(&mut b, &suffix);
    let vars = Vars {
        a: a.query_one("SELECT current_setting('port')::int", &[])
            .unwrap()
            .get::<_, i32>(0) as u16,
        b: b_cluster.port,
        dead: free_port(),
        suffix: suffix.clone(),
    };

    let root = temp_dir("differential");
    let mut mismatches = Vec::new();
    for (n, case) in cases().iter().enumerate() {
        let dir = root.join(n.to_string());
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::create_dir_all(dir.join("sys")).unwrap();
        for (path, text, mode) in case.files {
            write(&dir.join(path), &vars.fill(text, &dir), *mode);
        }
        let extra: Vec<(String, String)> = case
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), vars.fill(v, &dir)))
            .collect();
        let env = case_env(&dir, &extra);
        let conninfo = case.conninfo.map(|c| vars.fill(c, &dir));

        let by_psql = via_psql(&env, conninfo.as_deref(), &vars);
        let (by_pglock, stderr) = via_pglock(&env, conninfo.as_deref(), &mut a, &mut b);
        let expected = match case.expect {
            Some((user, db, server)) => {
                Landed::On(format!("{user}_{suffix}"), format!("{db}_{suffix}"), server)
            }
            None => Landed::Failed,
        };
        if by_psql != expected || by_pglock != expected {
            mismatches.push(format!(
                "{}: expected {expected:?}, psql {by_psql:?}, pglock {by_pglock:?} {stderr}",
                case.name
            ));
        }
        if let Some(want) = case.stderr {
            assert!(stderr.contains(want), "{}: {stderr}", case.name);
        }
        assert!(!stderr.contains("alice-pw"), "{}: {stderr}", case.name);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // target_session_attrs: libpq takes the first host that accepts; pglock wants a host where
    // the lock means something, and skips a read-only one. A database that defaults to read-only
    // transactions looks exactly like a standby to that check.
    b.batch_execute(&format!(
        "ALTER DATABASE db1_{suffix} SET default_transaction_read_only = on"
    ))
    .unwrap();
    let dir = root.join("rw");
    std::fs::create_dir_all(&dir).unwrap();
    let env = case_env(&dir, &[("PGPASSWORD".into(), "alice-pw".into())]);
    let pair = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=alice_{suffix} dbname=db1_{suffix}",
        vars.b, vars.a
    );
    let on = |server| Landed::On(format!("alice_{suffix}"), format!("db1_{suffix}"), server);
    assert_eq!(via_psql(&env, Some(&pair), &vars), on(Server::B));
    assert_eq!(
        via_pglock(&env, Some(&pair), &mut a, &mut b).0,
        on(Server::A)
    );
    let any = format!("{pair} target_session_attrs=any");
    assert_eq!(
        via_pglock(&env, Some(&any), &mut a, &mut b).0,
        on(Server::B)
    );
    let only_b = format!(
        "host=127.0.0.1 port={} user=alice_{suffix} dbname=db1_{suffix}",
        vars.b
    );
    let (landed, stderr) = via_pglock(&env, Some(&only_b), &mut a, &mut b);
    assert_eq!(landed, Landed::Failed);
    assert!(stderr.contains("does not allow writes"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}

fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_are_usage_errors_before_connecting() {
    let dir = temp_dir("usage");
    let cert = dir.join("client.crt");
    std::fs::write(&cert, "not checked before the key").unwrap();
    let no_key = format!(
        "host=db1 sslcert={} sslkey=/nonexistent.key",
        cert.display()
    );
    for (conninfo, env, expect) in [
        (
            "host=db1 colour=blue",
            None,
            "unknown connection option \"colour\"",
        ),
        (
            "postgresql://db1/app?colour=blue",
            None,
            "unknown parameter \"colour\"",
        ),
        ("postgresql://[::1/app", None, "invalid connection URL"),
        ("service=nosuch", None, "unknown service \"nosuch\""),
        ("host=db1 port=x", None, "invalid port number \"x\""),
        (
            "host=db1 sslmode=verify-full",
            None,
            "needs a root certificate",
        ),
        (no_key.as_str(), None, "private key file"),
        (
            "host=db1 target_session_attrs=standby",
            None,
            "target_session_attrs=standby (from target_session_attrs in the connection string) \
             would take the lock on a standby",
        ),
        ("host=db1", Some(("PGSSLCRL", "/x.crl")), "set by PGSSLCRL"),
    ] {
        let mut cmd = pglock();
        cmd.env("HOME", &dir)
            .env("PGSYSCONFDIR", &dir)
            .env_remove("PGSERVICEFILE")
            .args(["-d", conninfo, "--key", "usage", "--", "echo", "ran"]);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let (code, stdout, stderr) = output(&mut cmd);
        assert_eq!(code, Some(2), "{conninfo}: {stderr}");
        assert_eq!(stdout, "", "{conninfo}: the command ran");
        assert!(stderr.starts_with("pglock: "), "{conninfo}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{conninfo}: {stderr}");
        assert!(stderr.contains(expect), "{conninfo}: {stderr}");
    }
}

#[test]
fn passwords_never_appear_in_output() {
    let dead = free_port();
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "localhost".into());
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    for (conninfo, code) in [
        // Unreachable server.
        (format!("postgresql://u:Zq7Secret@127.0.0.1:{dead}/db"), 69),
        // Reachable server, wrong password.
        (
            format!("postgresql://postgres:Zq7Secret@{host}:{port}/postgres"),
            69,
        ),
        // Usage errors around a password.
        (format!("host={host} password=Zq7Secret colour=blue"), 2),
        (format!("host={host} password=Zq7 Secret=x"), 2),
        ("postgresql://u:Zq7@Secret@h/db".to_string(), 2),
        ("postgresql://u:Zq7%zzSecret@h/db".to_string(), 2),
    ] {
        let (got, stdout, stderr) =
            output(pglock().args(["-v", "-d", &conninfo, "--key", "pw", "--", "true"]));
        assert_eq!(got, Some(code), "{conninfo}: {stderr}");
        for text in [&stdout, &stderr] {
            assert!(
                !text.contains("Zq7") && !text.contains("Secret"),
                "{conninfo}: {text}"
            );
        }
    }
}

#[test]
fn verbose_warns_about_a_password_on_the_command_line() {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "localhost".into());
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    let password = std::env::var("PGPASSWORD").unwrap_or_default();
    let url = format!("postgresql://postgres:{password}@{host}:{port}/postgres");
    let warning = "visible to every local user in ps";

    let (code, _, stderr) = output(pglock().args(["-v", "-d", &url, "--key", "w", "--", "true"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(warning), "{stderr}");
    assert!(stderr.contains("PGPASSFILE"), "{stderr}");
    if !password.is_empty() {
        assert!(!stderr.contains(&password), "{stderr}");
    }
    // Not without -v.
    let (code, _, stderr) = output(pglock().args(["-d", &url, "--key", "w", "--", "true"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(warning), "{stderr}");
    // Not when the string came from PGLOCK_DATABASE_URL, which ps does not show.
    let (code, _, stderr) = output(
        pglock()
            .env("PGLOCK_DATABASE_URL", &url)
            .args(["-v", "--key", "w", "--", "true"]),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(warning), "{stderr}");
}

/// pglock's stderr for a run whose command must not start, and its exit code.
fn refused(cmd: &mut Command) -> (Option<i32>, String) {
    let (code, stdout, stderr) = output(cmd.args(["--", "echo", "ran"]));
    assert_eq!(stdout, "", "the command ran: {stderr}");
    (code, stderr)
}

#[test]
fn a_variable_that_is_not_utf8_is_refused_by_name() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    // Before: PGHOST was dropped (the default socket instead), PGUSER too (the OS user instead).
    for name in ["PGHOST", "PGUSER", "PGDATABASE", "PGSSLMODE"] {
        let (code, stderr) = refused(
            pglock()
                .env(name, OsStr::from_bytes(b"db\xff"))
                .args(["--key", "utf8"]),
        );
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "pglock: environment variable {name} is not valid UTF-8"
            )),
            "{name}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
    }
}

#[test]
fn a_check_interval_beyond_the_kernels_keepalive_limit_still_connects() {
    // TCP_KEEPIDLE stops at 32767 s (9h6m7s); 10h failed every connection with EINVAL (exit 69).
    // Over TCP, which is where keepalives apply.
    let host = std::env::var("PGHOST").unwrap_or_default();
    let host = if host.is_empty() || host.starts_with('/') {
        "localhost".to_string()
    } else {
        host
    };
    let (code, _, stderr) = output(pglock().env("PGHOST", host).args([
        "--check-interval",
        "10h",
        "--key",
        &unique_key("keepidle"),
        "--",
        "true",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn an_unreadable_password_file_gets_a_warning() {
    // libpq skips it without a word; pglock says why the password in it was not used. Root reads
    // any file, so as root pglock runs as nobody.
    let dir = temp_dir("pgpass-unreadable");
    let file = dir.join("pgpass");
    write(&file, "*:*:*:*:Zq7Secret\n", 0o000);
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        pglock()
    };
    cmd.env_remove("PGPASSWORD")
        .env_remove("PGLOCK_DATABASE_URL")
        .env("PGPASSFILE", &file)
        .args(["-d", "host=127.0.0.1", "--key", "pgpass"]);
    let (code, stderr) = refused(&mut cmd);
    let warning = format!(
        "pglock: warning: password file \"{}\" cannot be read (Permission denied",
        file.display()
    );
    assert!(stderr.starts_with(&warning), "{stderr}");
    assert_eq!(code, Some(69), "{stderr}");
    assert!(!stderr.contains("Zq7Secret"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn durations_take_their_units_largest_first() {
    // `1m1h` used to mean 61 minutes.
    let (code, stderr) = refused(pglock().args(["--timeout", "1m1h", "--key", "duration"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("'1m1h'"), "{stderr}");
    assert!(stderr.contains("largest first"), "{stderr}");
}
