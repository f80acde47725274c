//! Support for the connection tests: a PostgreSQL cluster of the test's own (its own port,
//! pg_hba.conf and TLS files), dropped again by a guard even when the test fails; what the server
//! shows about a pglock's session there; and the real psql binary for comparisons with libpq.
//!
//! Clusters come from Debian's pg_createcluster, or, when PGLOCK_TEST_PGBIN names a directory
//! with `initdb` and `pg_ctl` (as `.ci/pg-matrix` does for each PostgreSQL version), from
//! those binaries: same settings, same pg_hba.conf, same sockets.

use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The newest installed server version, or pg_virtualenv's.
pub fn pg_version() -> String {
    if let Ok(v) = std::env::var("PGVERSION") {
        return v;
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server packages are installed")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    versions.last().expect("a PostgreSQL version").to_string()
}

/// The server binaries to start clusters from instead of pg_createcluster: PGLOCK_TEST_PGBIN.
pub fn pg_bin() -> Option<PathBuf> {
    std::env::var_os("PGLOCK_TEST_PGBIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// libpq's own psql, not Debian's pg_wrapper, which picks ports from its cluster list.
pub fn psql() -> PathBuf {
    PathBuf::from(format!("/usr/lib/postgresql/{}/bin/psql", pg_version()))
}

/// A port nothing listens on: the kernel's pick, released again.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn run(cmd: &mut Command) {
    super::run(cmd).assert_success();
}

/// Where pg_createcluster keeps configuration: pg_virtualenv -t moves it to a temporary directory.
fn conf_root() -> PathBuf {
    std::env::var_os("PG_CLUSTER_CONF_ROOT")
        .map_or_else(|| PathBuf::from("/etc/postgresql"), PathBuf::from)
}

fn postgres_user() -> nix::unistd::User {
    nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("a postgres OS user")
}

fn chown_postgres(path: &Path) {
    let pg = postgres_user();
    nix::unistd::chown(path, Some(pg.uid), Some(pg.gid)).unwrap();
}

/// A running cluster made with pg_createcluster (the tests run as root). Dropped on drop.
pub struct Cluster {
    pub version: String,
    pub name: String,
    pub port: u16,
    /// The superuser's password.
    pub password: String,
    /// A directory the server can read, for its TLS files.
    pub dir: PathBuf,
    /// PGLOCK_TEST_PGBIN, when the cluster was started from it.
    bin: Option<PathBuf>,
}

impl Cluster {
    /// Creates and starts a cluster with these postgresql.conf settings and this pg_hba.conf.
    /// `prepare` may put files into the cluster's directory first (they are handed to the
    /// postgres user).
    pub fn start(tag: &str, conf: &[String], hba: &str, prepare: impl FnOnce(&Path)) -> Cluster {
        let version = pg_version();
        let bin = pg_bin();
        match &bin {
            Some(bin) => drop_stale_initdb(bin),
            None => drop_stale(&version),
        }
        let pid = std::process::id();
        let name = format!("pglock_{tag}_{pid}");
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        prepare(&dir);
        let password = format!("super-{pid}");
        std::fs::write(dir.join("pwfile"), &password).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            chown_postgres(&entry.unwrap().path());
        }
        chown_postgres(&dir);
        let port = free_port();
        let cluster = Cluster {
            version,
            name,
            port,
            password,
            dir,
            bin,
        };
        match &cluster.bin {
            Some(bin) => cluster.initdb(bin, conf, hba),
            None => cluster.create(conf, hba),
        }
        let config = cluster.config();
        let start = std::time::Instant::now();
        while let Err(e) = config.connect(NoTls) {
            assert!(
                start.elapsed() < super::LIMIT,
                "the test cluster does not accept connections: {e:?}\n{}",
                std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        cluster
    }

    /// Creates and starts the cluster with pg_createcluster and the installed server.
    fn create(&self, conf: &[String], hba: &str) {
        let cluster = self;
        let mut create = Command::new("pg_createcluster");
        create
            .args(["-p", &cluster.port.to_string(), "-d"])
            .arg(cluster.dir.join("data"))
            .args(["-o", "fsync=off", "-o", "listen_addresses=localhost"]);
        for c in conf {
            create.args(["-o", c]);
        }
        create
            .args([&cluster.version, &cluster.name, "--"])
            .arg(format!("--pwfile={}", cluster.dir.join("pwfile").display()))
            .arg("--auth=scram-sha-256")
            .arg("--no-sync");
        // From here on, a panic drops `cluster` and with it whatever got created.
        run(&mut create);
        std::fs::write(
            conf_root()
                .join(&cluster.version)
                .join(&cluster.name)
                .join("pg_hba.conf"),
            hba,
        )
        .unwrap();
        // pg_ctlcluster's own start-up checks add seconds; pg_ctl without waiting, then the
        // first successful connection, is what "ready" means to the tests.
        // runuser, unlike a bare setuid, also gives the server postgres's groups (ssl-cert).
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!(
                "/usr/lib/postgresql/{}/bin/pg_ctl",
                cluster.version
            ))
            .args(["start", "-W", "-D"])
            .arg(cluster.dir.join("data"))
            .arg("-l")
            .arg(cluster.dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-c config_file={}",
                conf_root()
                    .join(&cluster.version)
                    .join(&cluster.name)
                    .join("postgresql.conf")
                    .display()
            )));
    }

    /// Creates and starts the cluster with `bin`'s initdb and pg_ctl, configured as
    /// pg_createcluster would: the same settings, and sockets in Debian's socket directory.
    fn initdb(&self, bin: &Path, conf: &[String], hba: &str) {
        let data = self.dir.join("data");
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", self.dir.join("pwfile").display())));
        let mut settings = format!(
            "\nport = {}\nlisten_addresses = 'localhost'\nfsync = off\n\
             unix_socket_directories = '/var/run/postgresql'\n",
            self.port
        );
        for c in conf {
            let (name, value) = c.split_once('=').expect("name=value");
            let value = value.trim();
            if value.starts_with('\'') {
                settings += &format!("{name} = {value}\n");
            } else {
                settings += &format!("{name} = '{}'\n", value.replace('\'', "''"));
            }
        }
        let postgresql_conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&postgresql_conf).unwrap();
        text += &settings;
        std::fs::write(&postgresql_conf, text).unwrap();
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .args(["start", "-W", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(self.dir.join("server.log")));
    }

    fn config(&self) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(&self.password)
            .dbname("postgres");
        config
    }

    /// A superuser session over TCP.
    pub fn client(&self) -> Client {
        self.config().connect(NoTls).unwrap()
    }

    /// PG* variables that point pglock (or psql) at this server as its superuser.
    pub fn pg_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", "127.0.0.1".into()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", "postgres".into()),
            ("PGPASSWORD", self.password.clone()),
            ("PGDATABASE", "postgres".into()),
        ]
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's programs: PGLOCK_TEST_PGBIN's, or the installed version's.
    pub fn bin_dir(&self) -> PathBuf {
        self.bin
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{}/bin", self.version)))
    }

    /// Where pg_createcluster keeps this cluster's configuration (None: in the data directory).
    fn conf_dir(&self) -> Option<PathBuf> {
        self.bin
            .is_none()
            .then(|| conf_root().join(&self.version).join(&self.name))
    }

    /// `pg_ctl ARGS -D DATA` as the postgres user.
    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin_dir().join("pg_ctl"))
            .args(args)
            .arg("-D")
            .arg(self.data());
        cmd
    }

    /// Crashes the server as a power cut would look to it: `pg_ctl stop -m immediate`, no
    /// shutdown checkpoint, crash recovery at the next start.
    pub fn crash(&self) {
        run(&mut self.pg_ctl(&["stop", "-m", "immediate"]));
    }

    /// A clean shutdown.
    pub fn stop(&self) {
        run(&mut self.pg_ctl(&["stop", "-m", "fast"]));
    }

    /// Starts the server again and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut start = self.pg_ctl(&["start", "-w"]);
        start.arg("-l").arg(self.dir.join("server.log"));
        if let Some(conf) = self.conf_dir() {
            start.arg("-o").arg(format!(
                "-c config_file={}",
                conf.join("postgresql.conf").display()
            ));
        }
        run(&mut start);
    }

    /// Replaces pg_hba.conf and makes the server read it again.
    pub fn set_hba(&self, hba: &str) {
        let path = self
            .conf_dir()
            .unwrap_or_else(|| self.data())
            .join("pg_hba.conf");
        std::fs::write(path, hba).unwrap();
        self.client()
            .batch_execute("SELECT pg_reload_conf()")
            .unwrap();
    }

    /// A streaming standby of this server, started and connected. It starts from a copy of the
    /// data directory made while the server is shut down (the builds .ci/pg-matrix uses have no
    /// pg_basebackup), and the server starts again after it: the standby has been running
    /// longer. The server's pg_hba.conf must let `postgres` in for replication over TCP; `hba`
    /// is the standby's.
    pub fn standby(&self, hba: &str) -> Cluster {
        // Named like a cluster of this test process, so that drop_stale_initdb finds it too.
        let pid = std::process::id();
        let base = self
            .name
            .strip_suffix(&format!("_{pid}"))
            .unwrap_or(&self.name);
        let name = format!("{base}-standby_{pid}");
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        chown_postgres(&dir);
        let standby = Cluster {
            version: self.version.clone(),
            name,
            port: free_port(),
            password: self.password.clone(),
            dir,
            // Started with pg_ctl like an initdb cluster, and dropped like one.
            bin: Some(self.bin_dir()),
        };
        self.stop();
        run(Command::new("cp")
            .arg("-a")
            .arg(self.data())
            .arg(standby.data()));
        // Its own configuration, whatever the server's was (pg_createcluster keeps that outside
        // the data directory); ALTER SYSTEM's file, which the server reads last, names the
        // primary.
        let conf = format!(
            "port = {}\nlisten_addresses = 'localhost'\nfsync = off\n\
             unix_socket_directories = '/var/run/postgresql'\n\
             wal_retrieve_retry_interval = '100ms'\n",
            standby.port
        );
        let data = standby.data();
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        std::fs::write(data.join("standby.signal"), "").unwrap();
        let auto = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text += &format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres password={}'\n",
            self.port, self.password
        );
        std::fs::write(&auto, text).unwrap();
        for file in ["postgresql.conf", "pg_hba.conf", "standby.signal"] {
            chown_postgres(&data.join(file));
        }
        standby.start_again();
        self.start_again();
        standby
    }

    /// Promotes a standby and waits until it is a primary.
    pub fn promote(&self) {
        run(&mut self.pg_ctl(&["promote", "-w"]));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match &self.bin {
            Some(bin) => stop(bin, &self.dir.join("data")),
            None => {
                let _ = Command::new("pg_dropcluster")
                    .args(["--stop", &self.version, &self.name])
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops a server started with pg_ctl, at once: its data is thrown away.
fn stop(bin: &Path, data: &Path) {
    let _ = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .args(["stop", "-m", "immediate", "-D"])
        .arg(data)
        .output();
}

/// Stops and removes the initdb clusters of test processes that were killed before their guard
/// ran: directories named like [`Cluster::start`]'s in the temporary directory.
fn drop_stale_initdb(bin: &Path) {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("pglock_")
            .and_then(|rest| rest.rsplit('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let data = entry.path().join("data");
        if data.join("PG_VERSION").exists() && !Path::new(&format!("/proc/{pid}")).exists() {
            stop(bin, &data);
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Drops clusters left behind by test processes that were killed before their guard ran.
fn drop_stale(version: &str) {
    let Ok(dir) = std::fs::read_dir(conf_root().join(version)) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("pglock_")
            .and_then(|rest| rest.rsplit('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("pg_dropcluster")
                .args(["--stop", version, &name])
                .output();
        }
    }
}

/// What the server shows about pglock's session, found by its application_name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub database: String,
    pub ssl: bool,
    pub client_dn: Option<String>,
}

/// The session of the pglock holding `key`, if it is connected to this server.
pub fn session(client: &mut Client, key: &str) -> Option<Session> {
    let rows = client
        .query(
            "SELECT a.usename::text, a.datname::text, coalesce(s.ssl, false), s.client_dn \
             FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s USING (pid) \
             WHERE strpos(a.application_name, $1) = 1",
            &[&format!("pglock:{key}@")],
        )
        .unwrap();
    assert!(rows.len() <= 1, "several sessions for {key}");
    rows.first().map(|r| Session {
        user: r.get(0),
        database: r.get(1),
        ssl: r.get(2),
        client_dn: r.get(3),
    })
}

/// Writes a file with this mode.
pub fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
