//! Connecting like libpq, end to end: pglock against the real psql under the same environment,
//! password files, service files and connection strings (same user, database and server, or the
//! same failure); the multi-host rules; usage errors; and passwords kept out of every message.

use crate::util::cluster::{Cluster, free_port, psql, session, write};
use crate::util::*;
use postgres::Client;
use std::path::Path;
use std::process::Command;

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
        .arg("SELECT current_user, current_database(), current_setting('port')");
    if let Some(c) = conninfo {
        cmd.args(["-d", c]);
    }
    let out = run(cmd);
    if !out.success() {
        return Landed::Failed;
    }
    let text = out.stdout();
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
    match try_hold(cmd.args(["--key", &key])) {
        Ok(held) => {
            let on_a = session(a, &key);
            let on_b = session(b, &key);
            let landed = match (on_a, on_b) {
                (Some(s), None) => Landed::On(s.user, s.database, Server::A),
                (None, Some(s)) => Landed::On(s.user, s.database, Server::B),
                other => panic!("pglock's session is not on exactly one server: {other:?}"),
            };
            held.release().assert_success();
            (landed, String::new())
        }
        Err(out) => {
            assert!(
                matches!(out.code(), Some(2) | Some(69)),
                "pglock failed: {out}"
            );
            (Landed::Failed, out.stderr().to_string())
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

    let env = TestEnv::new("differential");
    let root = env.dir();
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
}

#[test]
fn bad_settings_are_usage_errors_before_connecting() {
    let env = TestEnv::new("usage");
    let dir = env.dir();
    let cert = dir.join("client.crt");
    std::fs::write(&cert, "not checked before the key").unwrap();
    let no_key = format!(
        "host=db1 sslcert={} sslkey=/nonexistent.key",
        cert.display()
    );
    for (conninfo, var, expect) in [
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
        cmd.env("HOME", dir)
            .env("PGSYSCONFDIR", dir)
            .env_remove("PGSERVICEFILE")
            .args(["-d", conninfo, "--key", "usage", "--", "echo", "ran"]);
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        run(cmd)
            .assert_code(2)
            .assert_stdout("")
            .assert_one_pglock_line()
            .assert_stderr_contains(expect);
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
        let out = run(pglock().args(["-v", "-d", &conninfo, "--key", "pw", "--", "true"]));
        out.assert_code(code);
        for text in [&out.stdout(), out.stderr()] {
            assert!(!text.contains("Zq7") && !text.contains("Secret"), "{out}");
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

    let env = TestEnv::new("pwarg");
    let out = run(pglock().args(["-v", "-d", &url, "--key", env.key(), "--", "true"]));
    out.assert_code(0)
        .assert_stderr_contains(warning)
        .assert_stderr_contains("PGPASSFILE");
    if !password.is_empty() {
        out.assert_stderr_lacks(&password);
    }
    // Not without -v.
    run(pglock().args(["-d", &url, "--key", env.key(), "--", "true"]))
        .assert_code(0)
        .assert_stderr_lacks(warning);
    // Not when the string came from PGLOCK_DATABASE_URL, which ps does not show.
    run(pglock()
        .env("PGLOCK_DATABASE_URL", &url)
        .args(["-v", "--key", env.key(), "--", "true"]))
    .assert_code(0)
    .assert_stderr_lacks(warning);
}

/// A run whose command must not start: `echo ran` prints nothing.
#[track_caller]
fn refused(cmd: &mut Command) -> Run {
    let out = run(cmd.args(["--", "echo", "ran"]));
    out.assert_stdout("");
    out
}

#[test]
fn a_variable_that_is_not_utf8_is_refused_by_name() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    // Before: PGHOST was dropped (the default socket instead), PGUSER too (the OS user instead).
    for name in ["PGHOST", "PGUSER", "PGDATABASE", "PGSSLMODE"] {
        refused(
            pglock()
                .env(name, OsStr::from_bytes(b"db\xff"))
                .args(["--key", "utf8"]),
        )
        .assert_code(2)
        .assert_stderr_starts_with(&format!(
            "pglock: environment variable {name} is not valid UTF-8"
        ))
        .assert_one_pglock_line();
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
    let env = TestEnv::new("keepidle");
    run(env
        .pglock(&["--check-interval", "10h", "--", "true"])
        .env("PGHOST", host))
    .assert_code(0);
}

#[test]
fn an_unreadable_password_file_gets_a_warning() {
    // libpq skips it without a word; pglock says why the password in it was not used. Root reads
    // any file, so as root pglock runs as nobody.
    let env = TestEnv::new("pgpass-unreadable");
    let file = env.path("pgpass");
    write(&file, "*:*:*:*:Zq7Secret\n", 0o000);
    let mut cmd = if nix::unistd::geteuid().is_root() {
        wrapped(
            "setpriv",
            &["--reuid=65534", "--regid=65534", "--clear-groups"],
        )
    } else {
        pglock()
    };
    cmd.env_remove("PGPASSWORD").env("PGPASSFILE", &file).args([
        "-d",
        "host=127.0.0.1",
        "--key",
        "pgpass",
    ]);
    let warning = format!(
        "pglock: warning: password file \"{}\" cannot be read (Permission denied",
        file.display()
    );
    refused(&mut cmd)
        .assert_stderr_starts_with(&warning)
        .assert_code(69)
        .assert_stderr_lacks("Zq7Secret");
}

#[test]
fn durations_take_their_units_largest_first() {
    // `1m1h` used to mean 61 minutes.
    refused(pglock().args(["--timeout", "1m1h", "--key", "duration"]))
        .assert_code(2)
        .assert_stderr_contains("'1m1h'")
        .assert_stderr_contains("largest first");
}
