//! TLS with libpq's meaning for every sslmode, against a cluster of the test's own that serves a
//! certificate from a CA the test makes with the openssl command. pg_stat_ssl, read from a
//! separate connection while pglock holds its lock, shows whether pglock's session is encrypted
//! and which client certificate it presented.

use crate::util::cluster::{Cluster, session, write};
use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    need("openssl", "openssl");
    run(Command::new("openssl").args(args).current_dir(dir)).assert_success();
}

/// A key and a certificate signing request for `cn`, with an EC key (fast to generate).
fn request(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
}

fn sign(dir: &Path, name: &str, ca: &str, extensions: Option<&str>) {
    let (csr, crt) = (format!("{name}.csr"), format!("{name}.crt"));
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let ext = format!("{name}.ext");
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &crt,
    ];
    if let Some(text) = extensions {
        std::fs::write(dir.join(&ext), text).unwrap();
        args.extend(["-extfile", &ext]);
    }
    openssl(dir, &args);
}

/// Two CAs; a server certificate from ca1 that names only `localhost`; a client certificate from
/// ca1 for `client_cn`, with its key in PKCS#8 (client.key), in OpenSSL's older EC format (which
/// pglock refuses) and encrypted; and a key of another certificate (other.key).
fn make_certificates(dir: &Path, client_cn: &str) {
    for ca in ["ca1", "ca2"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=pglock test {ca}"),
            ],
        );
    }
    request(dir, "server", "pglock-test-server");
    sign(dir, "server", "ca1", Some("subjectAltName=DNS:localhost\n"));
    request(dir, "client", client_cn);
    sign(dir, "client", "ca1", None);
    openssl(dir, &["ec", "-in", "client.key", "-out", "client-sec1.key"]);
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            "client.key",
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            "client-encrypted.key",
        ],
    );
    std::fs::copy(dir.join("ca2.key"), dir.join("other.key")).unwrap();
    for key in [
        "client.key",
        "client-sec1.key",
        "client-encrypted.key",
        "other.key",
    ] {
        write(
            &dir.join(key),
            &std::fs::read_to_string(dir.join(key)).unwrap(),
            0o600,
        );
    }
}

enum Expect {
    /// Connected; the session is encrypted or not, with this client certificate's DN.
    Connected { ssl: bool, dn: Option<String> },
    /// Exited with this code, saying this.
    Refused { code: i32, says: &'static str },
}

/// Name, connection string, $HOME, extra environment, expected outcome.
type Case<'a> = (&'a str, String, &'a Path, Vec<(&'a str, String)>, Expect);

#[test]
fn every_sslmode_against_a_tls_server() {
    let suffix = std::process::id();
    let cert_user = format!("certuser_{suffix}");
    let env = TestEnv::new("tls");
    let certs = env.path("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certificates(&certs, &cert_user);

    let hba = format!(
        "\
local all all scram-sha-256
hostssl all {cert_user} 127.0.0.1/32 cert
hostssl all {cert_user} ::1/128 cert
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"
    );
    let server_files = certs.clone();
    let conf_dir = std::env::temp_dir().join(format!("pglock_tls_{suffix}"));
    let conf: Vec<String> = [
        "ssl=on".to_string(),
        format!("ssl_cert_file={}", conf_dir.join("server.crt").display()),
        format!("ssl_key_file={}", conf_dir.join("server.key").display()),
        format!("ssl_ca_file={}", conf_dir.join("ca1.crt").display()),
    ]
    .into();
    let server = Cluster::start("tls", &conf, &hba, |dir| {
        assert_eq!(dir, conf_dir);
        for f in ["server.crt", "server.key", "ca1.crt"] {
            std::fs::copy(server_files.join(f), dir.join(f)).unwrap();
        }
        write(
            &dir.join("server.key"),
            &std::fs::read_to_string(dir.join("server.key")).unwrap(),
            0o600,
        );
    });
    let mut admin = server.client();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {cert_user} LOGIN; CREATE ROLE tls_{suffix} LOGIN PASSWORD 'tls-pw';"
        ))
        .unwrap();

    // Homes with and without libpq's default files.
    let homes = env.path("homes");
    let home = |name: &str, files: &[(&str, &str)]| -> PathBuf {
        let dir = homes.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (target, source) in files {
            let text = std::fs::read_to_string(certs.join(source)).unwrap();
            write(&dir.join(".postgresql").join(target), &text, 0o600);
        }
        dir
    };
    let empty = home("empty", &[]);
    let wrong_root = home("wrong-root", &[("root.crt", "ca2.crt")]);
    let right_root = home("right-root", &[("root.crt", "ca1.crt")]);
    let client_files = home(
        "client",
        &[
            ("root.crt", "ca1.crt"),
            ("postgresql.crt", "client.crt"),
            ("postgresql.key", "client.key"),
        ],
    );
    let loose_key = certs.join("loose.key");
    write(
        &loose_key,
        &std::fs::read_to_string(certs.join("client.key")).unwrap(),
        0o644,
    );

    let c = |f: &str| certs.join(f).display().to_string();
    let port = server.port;
    let pw_user = format!("port={port} dbname=postgres user=tls_{suffix}");
    let cert_login = format!("port={port} dbname=postgres user={cert_user}");
    let dn = Some(format!("/CN={cert_user}"));
    let encrypted = || Expect::Connected {
        ssl: true,
        dn: None,
    };
    let refused = |says| Expect::Refused { code: 69, says };
    let usage = |says| Expect::Refused { code: 2, says };
    let cases: Vec<Case> = vec![
        (
            "verify-full with the right CA and host name",
            format!(
                "{pw_user} host=localhost sslmode=verify-full sslrootcert={}",
                c("ca1.crt")
            ),
            &empty,
            vec![],
            encrypted(),
        ),
        (
            "verify-full with the wrong CA",
            format!(
                "{pw_user} host=localhost sslmode=verify-full sslrootcert={}",
                c("ca2.crt")
            ),
            &empty,
            vec![],
            refused("certificate verify failed"),
        ),
        (
            "verify-full to a host the certificate does not name",
            format!(
                "{pw_user} host=127.0.0.1 sslmode=verify-full sslrootcert={}",
                c("ca1.crt")
            ),
            &empty,
            vec![],
            refused("certificate verify failed"),
        ),
        (
            "verify-ca to an IP host",
            format!(
                "{pw_user} host=127.0.0.1 sslmode=verify-ca sslrootcert={}",
                c("ca1.crt")
            ),
            &empty,
            vec![],
            encrypted(),
        ),
        (
            "verify-ca with the wrong CA",
            format!(
                "{pw_user} host=127.0.0.1 sslmode=verify-ca sslrootcert={}",
                c("ca2.crt")
            ),
            &empty,
            vec![],
            refused("certificate verify failed"),
        ),
        (
            "verify-full from PGSSLMODE and PGSSLROOTCERT",
            format!("{pw_user} host=localhost"),
            &empty,
            vec![
                ("PGSSLMODE", "verify-full".into()),
                ("PGSSLROOTCERT", c("ca1.crt")),
            ],
            encrypted(),
        ),
        (
            "verify-full from ~/.postgresql/root.crt",
            format!("{pw_user} host=localhost sslmode=verify-full"),
            &right_root,
            vec![],
            encrypted(),
        ),
        (
            "verify-full without any root certificate",
            format!("{pw_user} host=localhost sslmode=verify-full"),
            &empty,
            vec![],
            usage("needs a root certificate"),
        ),
        (
            "sslrootcert=system means verify-full against the OS store",
            format!("{pw_user} host=localhost sslrootcert=system"),
            &empty,
            vec![],
            refused("certificate verify failed"),
        ),
        (
            "require encrypts without a root certificate",
            format!("{pw_user} host=127.0.0.1 sslmode=require"),
            &empty,
            vec![],
            encrypted(),
        ),
        (
            "require with a root file that does not match acts as verify-ca",
            format!("{pw_user} host=127.0.0.1 sslmode=require"),
            &wrong_root,
            vec![],
            refused("certificate verify failed"),
        ),
        (
            "require with a matching root file skips the host name, as verify-ca",
            format!("{pw_user} host=127.0.0.1 sslmode=require"),
            &right_root,
            vec![],
            encrypted(),
        ),
        (
            "prefer (the default) encrypts without checking",
            format!("{pw_user} host=127.0.0.1"),
            &wrong_root,
            vec![],
            encrypted(),
        ),
        (
            "allow behaves like prefer",
            format!("{pw_user} host=127.0.0.1 sslmode=allow"),
            &empty,
            vec![],
            encrypted(),
        ),
        (
            "disable",
            format!("{pw_user} host=127.0.0.1 sslmode=disable"),
            &empty,
            vec![],
            Expect::Connected {
                ssl: false,
                dn: None,
            },
        ),
        (
            "sslmode is ignored on a Unix socket, as in libpq",
            format!("{pw_user} host=/var/run/postgresql sslmode=verify-full"),
            &empty,
            vec![],
            Expect::Connected {
                ssl: false,
                dn: None,
            },
        ),
        (
            "client certificate from sslcert and sslkey",
            format!(
                "{cert_login} host=localhost sslmode=verify-full sslrootcert={} sslcert={} \
                 sslkey={}",
                c("ca1.crt"),
                c("client.crt"),
                c("client.key")
            ),
            &empty,
            vec![],
            Expect::Connected {
                ssl: true,
                dn: dn.clone(),
            },
        ),
        (
            "client certificate from PGSSLCERT and PGSSLKEY",
            format!("{cert_login} host=127.0.0.1 sslmode=require"),
            &empty,
            vec![
                ("PGSSLCERT", c("client.crt")),
                ("PGSSLKEY", c("client.key")),
            ],
            Expect::Connected {
                ssl: true,
                dn: dn.clone(),
            },
        ),
        (
            "client certificate from ~/.postgresql",
            format!("{cert_login} host=localhost sslmode=verify-full"),
            &client_files,
            vec![],
            Expect::Connected {
                ssl: true,
                dn: dn.clone(),
            },
        ),
        (
            "certificate authentication without a certificate",
            format!("{cert_login} host=127.0.0.1 sslmode=require"),
            &empty,
            vec![],
            refused("certificate"),
        ),
        (
            "a client key in OpenSSL's older EC format, which native-tls cannot read",
            format!(
                "{cert_login} host=127.0.0.1 sslmode=require sslcert={} sslkey={}",
                c("client.crt"),
                c("client-sec1.key")
            ),
            &empty,
            vec![],
            usage("is not in PKCS#8 format"),
        ),
        (
            "an encrypted client key, whose passphrase pglock cannot ask for",
            format!(
                "{cert_login} host=127.0.0.1 sslcert={} sslkey={}",
                c("client.crt"),
                c("client-encrypted.key")
            ),
            &empty,
            vec![],
            usage("is encrypted"),
        ),
        (
            "a client key that belongs to another certificate",
            format!(
                "{cert_login} host=127.0.0.1 sslcert={} sslkey={}",
                c("client.crt"),
                c("other.key")
            ),
            &empty,
            vec![],
            usage("does not belong to client certificate"),
        ),
        (
            "channel_binding=require: SCRAM bound to the server's certificate",
            format!("{pw_user} host=127.0.0.1 sslmode=require channel_binding=require"),
            &empty,
            vec![],
            encrypted(),
        ),
        (
            "a client key others can read",
            format!(
                "{cert_login} host=127.0.0.1 sslcert={} sslkey={}",
                c("client.crt"),
                loose_key.display()
            ),
            &empty,
            vec![],
            usage("chmod 0600"),
        ),
    ];

    let mut wrong = Vec::new();
    for (name, conninfo, home, vars, expect) in cases {
        let mut cmd = pglock();
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", home)
            .env("PGPASSWORD", "tls-pw")
            .envs(vars)
            .args(["-d", &conninfo]);
        let key = unique_key("tls");
        match (try_hold(cmd.args(["--key", &key])), expect) {
            (Ok(held), Expect::Connected { ssl, dn }) => {
                let s = session(&mut admin, &key).expect("pglock's session on the TLS server");
                if (s.ssl, &s.client_dn) != (ssl, &dn) {
                    wrong.push(format!(
                        "{name}: ssl {} dn {:?}, expected ssl {ssl} dn {dn:?}",
                        s.ssl, s.client_dn
                    ));
                }
                held.release().assert_success();
            }
            (Err(out), Expect::Refused { code: want, says }) => {
                // Once: OpenSSL's error types repeat their text at every level of the chain.
                if out.code() != Some(want) || out.stderr().matches(says).count() != 1 {
                    wrong.push(format!(
                        "{name}: expected {want} saying {says:?} once: {out}"
                    ));
                }
            }
            (Ok(held), Expect::Refused { .. }) => {
                held.release();
                wrong.push(format!("{name}: connected, expected a refusal"));
            }
            (Err(out), Expect::Connected { .. }) => {
                wrong.push(format!("{name}: {out}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_run_path_leaves_the_system_trust_store_unread_when_unused() {
    // native-tls loads the system CA bundle (~30 ms) unless SSL_CERT_FILE is diverted, which is
    // sound only while pglock has one thread: the run path must build its connector before the
    // signal thread starts. The connector is built before connecting, so no server is needed:
    // port 1 refuses at once.
    let env = TestEnv::new("tls-store");
    let certs = env.dir();
    openssl(
        certs,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=ca",
            "-days",
            "2",
        ],
    );
    let ca = certs.join("ca.crt").display().to_string();
    for (conninfo, store) in [
        ("sslmode=prefer".to_string(), "skipped"),
        ("sslmode=require".to_string(), "skipped"),
        (format!("sslmode=verify-full sslrootcert={ca}"), "skipped"),
        ("sslrootcert=system".to_string(), "loaded"),
    ] {
        let conninfo = format!("host=127.0.0.1 port=1 {conninfo}");
        run(env.pglock(&["-v", "-d", &conninfo, "--", "true"]))
            .assert_code(69)
            .assert_stderr_contains(&format!("(system trust store {store})"));
    }
}

#[test]
fn the_command_inherits_ssl_cert_file_as_pglock_got_it() {
    // The trust-store shortcut diverts SSL_CERT_FILE while the connector is built; the command
    // must see the variable as it was, or its absence. Over TCP, where a connector is built.
    let host = std::env::var("PGHOST").unwrap_or_default();
    let host = if host.is_empty() || host.starts_with('/') {
        "localhost".to_string()
    } else {
        host
    };
    for given in [None, Some("/etc/pglock-test-bundle.pem")] {
        let mut cmd = pglock();
        match given {
            Some(v) => cmd.env("SSL_CERT_FILE", v),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        cmd.env("PGHOST", &host)
            .env("PGSSLMODE", "prefer")
            .args(["--key", &unique_key("tls-env"), "--", "sh", "-c"])
            .arg("printf %s \"${SSL_CERT_FILE-unset}\"");
        run(cmd)
            .assert_code(0)
            .assert_stdout(given.unwrap_or("unset"));
    }
}
