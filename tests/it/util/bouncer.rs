//! A real PgBouncer in front of the test server, on a port of its own.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Bouncer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Bouncer {
    /// Starts pgbouncer with `pool_mode`, forwarding database "postgres" to the test server.
    pub fn start(pool_mode: &str) -> Bouncer {
        Bouncer::start_with(pool_mode, &[])
    }

    /// The same, with more pgbouncer.ini settings (`default_pool_size` and `max_client_conn`
    /// replace the defaults, 4 and 200).
    pub fn start_with(pool_mode: &str, settings: &[(&str, &str)]) -> Bouncer {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        let (host, port) = (var("PGHOST", "localhost"), var("PGPORT", "5432"));
        let (user, password) = (var("PGUSER", "postgres"), var("PGPASSWORD", ""));
        let listen = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = super::temp_dir("pgbouncer");
        let ini = format!(
            "[databases]\n* = host={host} port={port} user={user} password={password}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {dir}/users.txt\n\
             pool_mode = {pool_mode}\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display()
        );
        let mut ini = ini;
        for (name, default) in [("default_pool_size", "4"), ("max_client_conn", "200")] {
            if !settings.iter().any(|(n, _)| *n == name) {
                ini.push_str(&format!("{name} = {default}\n"));
            }
        }
        for (name, value) in settings {
            ini.push_str(&format!("{name} = {value}\n"));
        }
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        // PgBouncer refuses to run as root; the test server's own account runs it then.
        let mut cmd = Command::new("pgbouncer");
        if nix::unistd::geteuid().is_root() {
            let owner = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(&dir, Some(owner.uid), Some(owner.gid)).unwrap();
            cmd.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer is needed for these tests: apt-get install pgbouncer");
        super::wait_until("pgbouncer to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok()
        });
        Bouncer {
            port: listen,
            dir,
            child,
        }
    }

    /// What pgbouncer has logged so far.
    pub fn log(&self) -> String {
        super::read(&self.dir.join("pgbouncer.log"))
    }

    /// A connection string for pglock through the pooler.
    pub fn conninfo(&self) -> String {
        let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
        format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres sslmode=disable",
            self.port
        )
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
