//! pglock's integration tests: the real binary against a real PostgreSQL server, in one crate
//! (one build, one link), with the fixtures they share in `util`.

mod util;

mod beyond;
mod connect;
mod core;
mod docs;
mod fencing;
mod fleet;
mod hardening;
mod ledger;
mod status;
mod tls;
mod token;
mod torture;
