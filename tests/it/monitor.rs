//! Issue 25, items 4 and 5: --ping against a real HTTP listener the tests start (it records each
//! request and answers 200, or accepts and stays silent), and --capture and --quiet-on-success.

use crate::util::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the monitor got it.
#[derive(Debug, Clone)]
struct Request {
    /// `GET /path?query HTTP/1.1`.
    line: String,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn method(&self) -> &str {
        self.line.split(' ').next().unwrap()
    }

    fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap()
    }

    /// The path's last segment and the rid: (`start`, RID) or (`3`, RID).
    fn ping(&self) -> (String, String) {
        let (path, query) = self.target().split_once('?').unwrap();
        let what = path.rsplit('/').next().unwrap().to_string();
        let rid = query.strip_prefix("rid=").unwrap().to_string();
        (what, rid)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A monitor on 127.0.0.1: it records what it is sent.
struct Monitor {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Monitor {
    /// Answers every request with 200, or, `silent`, accepts and never answers.
    fn start(silent: bool) -> Monitor {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if silent {
                    held.push(stream);
                    continue;
                }
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || serve(stream, &seen));
            }
        });
        Monitor { port, requests }
    }

    /// A check URL with a path token no other test uses.
    fn url(&self, token: &str) -> String {
        format!("http://127.0.0.1:{}/ping/{token}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits a moment for requests still under way, then returns them all.
    fn settled(&self, expected: usize) -> Vec<Request> {
        let until = Instant::now() + Duration::from_secs(5);
        while self.requests().len() < expected && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        self.requests()
    }
}

/// HTTP/1.1 requests on one connection, each answered 200.
fn serve(stream: TcpStream, seen: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut req = Request {
            line: line.trim_end().to_string(),
            headers,
            body: Vec::new(),
        };
        if let Some(len) = req.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            reader.read_exact(&mut body).unwrap();
            req.body = body;
        } else if req.header("transfer-encoding") == Some("chunked") {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).unwrap();
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).unwrap();
                if size == 0 {
                    break;
                }
                req.body.extend_from_slice(&chunk[..size]);
            }
        }
        seen.lock().unwrap().push(req);
        let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
    }
}

/// A path token for one test: pglock must never print it.
fn token(name: &str) -> String {
    format!("secret-{name}-{}", std::process::id())
}

#[test]
fn start_and_end_pings_share_a_run_id_and_report_the_status() {
    let env = TestEnv::new("ping-status");
    let monitor = Monitor::start(false);
    let url = monitor.url(&token("status"));
    env.run_script(&["--ping", &url], "exit 3").assert_code(3);
    let got = monitor.settled(2);
    assert_eq!(got.len(), 2, "{got:#?}");
    let (start, end) = (&got[0], &got[1]);
    assert_eq!(start.method(), "GET");
    assert_eq!(end.method(), "POST");
    let (what, rid) = start.ping();
    assert_eq!(what, "start");
    assert_eq!(end.ping(), ("3".to_string(), rid.clone()));
    // A UUID, version 4.
    assert_eq!(rid.len(), 36, "{rid}");
    assert_eq!(&rid[14..15], "4", "{rid}");
    assert!(end.body.is_empty(), "no --capture, no body: {end:?}");
    let agent = start.header("user-agent").unwrap();
    assert_eq!(agent, format!("pglock/{}", env!("CARGO_PKG_VERSION")));

    // The variable works as the flag does; another run gets another id.
    run(env.pglock(&["-c", "true"]).env("PGLOCK_PING_URL", &url)).assert_success();
    let got = monitor.settled(4);
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(got[2].ping().0, "start");
    assert_eq!(got[3].ping().0, "0");
    assert_eq!(got[2].ping().1, got[3].ping().1);
    assert_ne!(got[2].ping().1, rid);
}

#[test]
fn hosts_that_do_not_run_the_command_do_not_ping() {
    let env = TestEnv::new("ping-busy");
    let monitor = Monitor::start(false);
    let url = monitor.url(&token("busy"));
    let holder = env.hold(&[]);
    env.run_script(&["--ping", &url, "--nowait"], "true")
        .assert_code(75);
    env.run_script(&["--ping", &url, "--timeout", "200ms"], "true")
        .assert_code(75);
    drop(holder);
    assert!(monitor.settled(0).is_empty());

    // --once-per: the first host runs and reports; the next skips, silently.
    let table = format!("public.monitor_test_{}", std::process::id());
    run(pglock().args(["init", "--ledger", &table])).assert_success();
    let once = ["--ping", &url, "--once-per", "1h", "--ledger", &table];
    env.run_script(&once, "true").assert_success();
    assert_eq!(monitor.settled(2).len(), 2);
    env.run_script(&once, "true").assert_success();
    assert_eq!(monitor.settled(2).len(), 2, "{:#?}", monitor.requests());
    let _ = sql().batch_execute(&format!("DROP TABLE IF EXISTS {table}"));
}

#[test]
fn a_silent_monitor_holds_nothing_back() {
    let env = TestEnv::new("ping-silent");
    let monitor = Monitor::start(true);
    let url = monitor.url(&token("silent"));
    let began = Instant::now();
    let r = env.run_script(&["--ping", &url, "--ping-timeout", "2s"], "exit 5");
    let took = began.elapsed();
    r.assert_code(5)
        .assert_stderr_contains("pglock: ping to 127.0.0.1 failed: ");
    assert!(took < Duration::from_millis(3500), "took {took:?}");
    assert!(took >= Duration::from_secs(2), "gave up early: {took:?}");

    // The command starts at once, whatever the monitor does.
    let began = Instant::now();
    let marker = env.path("started");
    let r = env.run_script(
        &["--ping", &url, "--ping-timeout", "1s"],
        &format!("date +%s%N > {}", marker.display()),
    );
    r.assert_success();
    let started: u128 = read(&marker).trim().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let after = Duration::from_nanos((now - started) as u64);
    assert!(
        after + Duration::from_millis(800) >= began.elapsed(),
        "the command started {:?} into the run",
        began.elapsed() - after
    );
}

#[test]
fn the_url_is_never_printed() {
    let env = TestEnv::new("ping-secret");
    let monitor = Monitor::start(false);
    let secret = token("never-printed");
    let url = format!(
        "http://someone:pa55-{secret}@127.0.0.1:{}/ping/{secret}",
        monitor.port
    );
    let r = env.run_script(&["-v", "--capture", "--ping", &url], "echo hi; exit 1");
    r.assert_code(1);
    assert!(r.stderr().contains("127.0.0.1"), "{r}");
    assert!(
        !r.stderr().contains(&secret) && !r.stdout().contains(&secret),
        "{r}"
    );
    let got = monitor.settled(2);
    assert_eq!(got.len(), 2);
    // The user name and password went as Basic authentication.
    assert!(
        got[0]
            .header("authorization")
            .unwrap()
            .starts_with("Basic ")
    );

    // A monitor that refuses the ping: its failure names the host only.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/ping/{secret}");
    let r = env.run_script(&["-v", "--ping", &url, "--ping-timeout", "1s"], "true");
    r.assert_success()
        .assert_stderr_contains("pglock: ping to 127.0.0.1 failed: ");
    assert!(!r.stderr().contains(&secret), "{r}");
}

#[test]
fn a_malformed_ping_url_is_a_usage_error_that_does_not_echo_it() {
    for bad in [
        "notaurl-s3cret",
        "ftp://host/s3cret",
        "https://host/s3cret?x=1",
    ] {
        let r = run(pglock().args(["--key", "k", "--ping", bad, "--", "true"]));
        r.assert_code(2)
            .assert_stderr_contains("pglock: usage error: --ping: ");
        assert!(!r.stderr().contains("s3cret"), "{r}");
        let r = run(pglock()
            .args(["--key", "k", "--", "true"])
            .env("PGLOCK_PING_URL", bad));
        r.assert_code(2);
        assert!(!r.stderr().contains("s3cret"), "{r}");
    }
    run(pglock().args(["--key", "k", "--ping-timeout", "0", "--", "true"])).assert_code(2);
}

#[test]
fn the_captured_tail_goes_in_the_end_ping() {
    let env = TestEnv::new("ping-capture");
    let monitor = Monitor::start(false);
    let url = monitor.url(&token("capture"));
    // 100 KiB of numbered lines on stdout, then one line on stderr.
    let script = "i=0; while [ $i -lt 14000 ]; do printf 'line %06d\\n' $i; i=$((i+1)); done; \
                  sleep 0.3; echo END >&2; exit 4";
    let r = env.run_script(&["--capture", "--ping", &url], script);
    r.assert_code(4).assert_stderr("END\n");
    let out = r.stdout();
    assert_eq!(out.len(), 14000 * 12);
    let got = monitor.settled(2);
    let body = &got[1].body;
    assert_eq!(got[1].ping().0, "4");
    assert_eq!(body.len(), 10 * 1024);
    assert!(body.ends_with(b"line 013999\nEND\n"));
    let from_stdout = &body[..body.len() - 4];
    assert!(out.as_bytes().ends_with(from_stdout));
}

#[test]
fn quiet_on_success_prints_only_a_failure() {
    let env = TestEnv::new("quiet");
    let script = "echo o1; echo e1 >&2; echo o2; echo e2 >&2";
    let r = env.run_script(&["--quiet-on-success"], script);
    r.assert_success().assert_stderr("");
    assert_eq!(r.stdout(), "");
    let r = env.run_script(&["--quiet-on-success"], &format!("{script}; exit 6"));
    r.assert_code(6).assert_stderr("e1\ne2\n");
    assert_eq!(r.stdout(), "o1\no2\n");
}

#[test]
fn a_closed_stdout_is_a_broken_pipe_for_the_command() {
    let env = TestEnv::new("capture-epipe");
    let monitor = Monitor::start(false);
    let url = monitor.url(&token("epipe"));
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    drop(reader);
    // The command ignores SIGPIPE, so its echo fails with EPIPE, and it says so on stderr.
    let script = "trap '' PIPE; i=0; while echo x; do i=$((i+1)); \
                  [ $i -gt 100000 ] && exit 9; done; echo broken >&2; exit 3";
    let r = run(env
        .pglock(&["--capture", "--ping", &url, "-c", script])
        .stdout(std::process::Stdio::from(writer)));
    r.assert_code(3).assert_stderr_contains("broken\n");
    let got = monitor.settled(2);
    assert!(got[1].body.ends_with(b"broken\n"), "{got:?}");
    // With SIGPIPE's default, it dies of it, as it would without pglock.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    drop(reader);
    run(env
        .pglock(&["--capture", "--", "yes"])
        .stdout(std::process::Stdio::from(writer)))
    .assert_code(128 + 13);
}
