//! A TCP proxy between pglock and the server that the test can break on purpose: stop forwarding
//! without closing anything (a silent partition as the client sees it) for every connection or
//! only for those made so far, or for a connection from the moment it sends a given statement,
//! or cut every connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Proxy {
    pub port: u16,
    frozen: Arc<AtomicBool>,
    /// A connection falls silent when the client sends a message containing this.
    mute_at: Arc<Mutex<Option<Vec<u8>>>>,
    closed: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    /// Each forwarded connection's own switch.
    silenced: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// When each client connection arrived, forwarded or not.
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<some free port> to the test server named by PGHOST/PGPORT.
    pub fn start() -> Proxy {
        Proxy::launch(false)
    }

    /// A proxy that hangs up on every client, as a server that is down, until [`Proxy::open`].
    pub fn start_closed() -> Proxy {
        Proxy::launch(true)
    }

    /// Starts forwarding new connections.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }

    fn launch(closed: bool) -> Proxy {
        let host = std::env::var("PGHOST").unwrap_or_else(|_| "localhost".into());
        let host = if host.starts_with('/') {
            "localhost".into()
        } else {
            host
        };
        let port: u16 = std::env::var("PGPORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(5432);
        let upstream = (host.as_str(), port)
            .to_socket_addrs()
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            frozen: Arc::new(AtomicBool::new(false)),
            mute_at: Arc::new(Mutex::new(None)),
            closed: Arc::new(AtomicBool::new(closed)),
            accepted: Arc::new(AtomicUsize::new(0)),
            streams: Arc::new(Mutex::new(Vec::new())),
            silenced: Arc::new(Mutex::new(Vec::new())),
            arrivals: Arc::new(Mutex::new(Vec::new())),
        };
        let arrivals = proxy.arrivals.clone();
        let (frozen, accepted, streams) = (
            proxy.frozen.clone(),
            proxy.accepted.clone(),
            proxy.streams.clone(),
        );
        let closed = proxy.closed.clone();
        let silenced = proxy.silenced.clone();
        let mute_at = proxy.mute_at.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                arrivals.lock().unwrap().push(Instant::now());
                if closed.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                streams.lock().unwrap().push(client.try_clone().unwrap());
                streams.lock().unwrap().push(server.try_clone().unwrap());
                let silent = Arc::new(AtomicBool::new(false));
                silenced.lock().unwrap().push(silent.clone());
                let quiet = [frozen.clone(), silent.clone()];
                let mute = mute_at.clone();
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    quiet.clone(),
                    Some((mute, silent)),
                );
                pump(server, client, quiet, None);
            }
        });
        proxy
    }

    /// From now on, bytes in either direction are swallowed; no socket is closed.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Silences the connections made so far, as [`Proxy::freeze`] does; new ones still get
    /// through (a cancel request, a reconnect).
    pub fn freeze_existing(&self) {
        for s in self.silenced.lock().unwrap().iter() {
            s.store(true, Ordering::SeqCst);
        }
    }

    /// Silences each connection (as [`Proxy::freeze_existing`] does) from the moment its client
    /// sends a message containing `text`, which does not reach the server: a network that went
    /// silent between the connect and that statement. Plaintext only (`sslmode=disable`).
    pub fn mute_at(&self, text: &str) {
        *self.mute_at.lock().unwrap() = Some(text.as_bytes().to_vec());
    }

    /// Closes every connection made so far (both sides see end of file).
    pub fn cut_all(&self) {
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// When each client connection so far arrived, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }

    /// How many client connections the proxy has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The text that silences a connection (see [`Proxy::mute_at`]) and that connection's switch.
type MuteAt = (Arc<Mutex<Option<Vec<u8>>>>, Arc<AtomicBool>);

/// Copies `from` to `to` unless one of `quiet` is set (or `mute` sets it).
fn pump(mut from: TcpStream, mut to: TcpStream, quiet: [Arc<AtomicBool>; 2], mute: Option<MuteAt>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    if let Some((text, silent)) = &mute {
                        if let Some(text) = text.lock().unwrap().as_deref() {
                            if buf[..n].windows(text.len()).any(|w| w == text) {
                                silent.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    if quiet.iter().any(|q| q.load(Ordering::SeqCst)) {
                        continue;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
}
