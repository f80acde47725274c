//! --ping: reporting a run to a monitor that speaks healthchecks.io's ping protocol (the hosted
//! service, a self-hosted Healthchecks, and the monitors that imitate it).
//!
//! A run that starts its command sends `URL/start?rid=RID` from a thread of its own, so that the
//! command does not wait for the monitor, and `URL/STATUS?rid=RID` once pglock knows its exit
//! status, with the captured output's tail as the body. A monitor never holds the job back: the
//! end gets at most --ping-timeout in all (a second after a terminating signal), and a failed
//! ping is one warning line, never another exit status.
//!
//! The URL is a credential (anyone who has it can report for the check, and a slug URL holds a
//! project's ping key), so nothing here prints it or lets it reach an error message: messages
//! name the host only, and [`Target`]'s Debug does too.
//!
//! https checks the monitor's certificate against the operating system's trust store (OpenSSL's
//! default locations, which SSL_CERT_FILE and SSL_CERT_DIR override), as the lock connection
//! does with sslrootcert=system. The database's own sslrootcert is not used: it names the CA of
//! the PostgreSQL server, which is rarely the one of a monitor on the internet.

use crate::{duration, step, warn};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use ureq::http::Uri;

/// After a terminating signal, the end ping gets at most this long: whoever stopped the job
/// wants pglock gone.
pub const AFTER_SIGNAL: Duration = Duration::from_secs(1);

/// Where to report: the check's URL, without a trailing slash, and its host for messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    url: String,
    host: String,
}

impl std::fmt::Debug for Target {
    /// The host only: the URL is a credential, and RunOptions is Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("host", &self.host).finish()
    }
}

impl Target {
    /// A check's ping URL. The error never contains `text`: it may be a credential.
    pub fn parse(text: &str) -> Result<Target, String> {
        let bad = |why: &str| {
            Err(format!(
                "--ping: {why} (the value is not shown: a ping URL is a credential)"
            ))
        };
        let Ok(uri) = text.parse::<Uri>() else {
            return bad(
                "not a URL; give an http:// or https:// URL such as https://hc-ping.com/UUID",
            );
        };
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return bad("not an http:// or https:// URL"),
        }
        let host = match uri.host() {
            Some(host) if !host.is_empty() => host.to_string(),
            _ => return bad("the URL has no host"),
        };
        if uri.query().is_some() {
            return bad("the URL has a query (?...); pglock adds /start, /STATUS and ?rid= itself");
        }
        Ok(Target {
            url: text.trim_end_matches('/').to_string(),
            host,
        })
    }

    /// The URL of one ping: `/start` or `/STATUS`, with the run's id.
    fn ping(&self, what: &str, rid: &str) -> String {
        format!("{}/{what}?rid={rid}", self.url)
    }

    /// `text` with every part of the URL that could give it away replaced: an HTTP library's
    /// message may quote what it was given.
    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        let secret = self.url.split_once("://").map_or(&*self.url, |(_, s)| s);
        let (authority, path) = secret.split_once('/').unwrap_or((secret, ""));
        let mut parts = vec![self.url.as_str(), secret];
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            parts.push(userinfo);
            parts.extend(userinfo.split(':').filter(|p| p.len() >= 4));
        }
        parts.extend(path.split('/').filter(|p| p.len() >= 4));
        parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            out = out.replace(part, "…");
        }
        out
    }
}

/// The run a start ping announced; [`Run::end`] reports its end.
pub struct Run {
    target: Target,
    rid: String,
    agent: ureq::Agent,
    /// Closed when the start ping is done (whatever became of it).
    started: mpsc::Receiver<()>,
}

/// Sends the start ping on a thread of its own and returns at once: the command must not wait
/// for the monitor. The thread is never joined; pglock may exit while it still waits.
pub fn start(target: &Target, timeout: Duration) -> Run {
    let rid = run_id();
    let agent = agent();
    let (done, started) = mpsc::channel();
    let thread = {
        let (target, rid, agent) = (target.clone(), rid.clone(), agent.clone());
        std::thread::Builder::new()
            .name("ping".into())
            .spawn(move || {
                block_signals();
                let until = duration::after(Instant::now(), timeout);
                let url = target.ping("start", &rid);
                if let Err(why) = send(&agent, &url, None, until, &target) {
                    warn!("ping to {} failed: {why}", target.host);
                }
                drop(done);
            })
    };
    if let Err(e) = thread {
        warn!(
            "ping to {} failed: cannot start its thread: {e}",
            target.host
        );
    }
    step!("ping: start of run {rid} to {}", target.host);
    Run {
        target: target.clone(),
        rid,
        agent,
        started,
    }
}

impl Run {
    /// Reports pglock's exit status, with `body` (the output's tail, maybe empty), within
    /// `budget` in all. Waits first for the start ping, for at most half of it, so that the
    /// monitor hears of the start before the end: a start that arrives last would leave the
    /// check running.
    pub fn end(self, status: u8, body: &[u8], budget: Duration) {
        let began = Instant::now();
        let until = duration::after(began, budget);
        let _ = self.started.recv_timeout(budget / 2);
        let url = self.target.ping(&status.to_string(), &self.rid);
        match send(&self.agent, &url, Some(body), until, &self.target) {
            Ok(()) => step!(
                "ping: end of run {} (status {status}) to {} in {}",
                self.rid,
                self.target.host,
                duration::format(began.elapsed())
            ),
            Err(why) => warn!("ping to {} failed: {why}", self.target.host),
        }
    }
}

/// One ping, retried after a failure that may pass (no answer, a 5xx, 429) until `until`.
/// The error is a message fit to print: it names no part of the URL.
fn send(
    agent: &ureq::Agent,
    url: &str,
    body: Option<&[u8]>,
    until: Instant,
    target: &Target,
) -> Result<(), String> {
    let mut pause = Duration::from_millis(200);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer within --ping-timeout".into());
        }
        let answer = match body {
            None => agent
                .get(url)
                .config()
                .timeout_global(Some(left))
                .build()
                .call(),
            Some(body) => agent
                .post(url)
                .config()
                .timeout_global(Some(left))
                .build()
                .header("Content-Type", "text/plain; charset=utf-8")
                .send(body),
        };
        let why = match answer {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                let why = format!("HTTP {}", status.as_u16());
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(why);
                }
                why
            }
            Err(ureq::Error::Timeout(_)) => "no answer in time".to_string(),
            Err(e) => target.redact(&e.to_string()),
        };
        let left = until.saturating_duration_since(Instant::now());
        if left <= pause {
            return Err(why);
        }
        step!("ping to {} failed ({why}); trying again", target.host);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// One agent per run: proxies from the environment (HTTPS_PROXY, NO_PROXY), the system's trust
/// store, no redirects (a ping URL that moved is a misconfiguration to report, and a redirect
/// would hand the body to another host), and a User-Agent that names pglock.
fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("pglock/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// A fresh random UUID (version 4), as the protocol's rid must be, from getrandom(2).
fn run_id() -> String {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        // SAFETY: the pointer and length describe the unfilled rest of `b`, which getrandom
        // writes at most that many bytes into.
        let n =
            unsafe { nix::libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if nix::errno::Errno::last() != nix::errno::Errno::EINTR {
            // No getrandom(2) (an old kernel, a seccomp filter): the clock and the pid still
            // make an id no other run has.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            b = (t ^ (u128::from(std::process::id()) << 64)).to_be_bytes();
            break;
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Signals are the router's and the main thread's business: the ping thread keeps them blocked
/// so that none interrupts its system calls.
fn block_signals() {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("https://user:s3cret@hc.example.com/ping/abcd-1234/").unwrap();
        assert_eq!(t.host, "hc.example.com");
        assert_eq!(
            t.ping("start", "r"),
            "https://user:s3cret@hc.example.com/ping/abcd-1234/start?rid=r"
        );
        for bad in [
            "notaurl",
            "ftp://x/y",
            "https:///nohost",
            "https://h/p?q=1",
            "",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        assert!(!format!("{t:?}").contains("abcd"));
    }

    #[test]
    fn redaction() {
        let t = Target::parse("https://user:s3cret@hc.example.com/ping/abcd-1234").unwrap();
        let text =
            "bad uri: https://user:s3cret@hc.example.com/ping/abcd-1234/0?rid=x and abcd-1234";
        let r = t.redact(text);
        assert!(!r.contains("abcd-1234") && !r.contains("s3cret"), "{r}");
    }

    #[test]
    fn run_ids_are_uuid_v4() {
        let (a, b) = (run_id(), run_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]));
    }
}
