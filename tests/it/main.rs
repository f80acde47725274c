//! pglock's integration tests: the real binary against a real PostgreSQL server, in one crate
//! (one build, one link), with the fixtures they share in `util`.

mod util;

mod beyond;
mod cmdline;
mod connect;
mod core;
mod deadlines;
mod deploys;
mod docs;
mod doctor;
mod exclusion;
mod fencing;
mod fleet;
mod hardening;
mod jobrunner;
mod layers;
mod ledger;
mod limits;
mod monitor;
mod nemesis;
mod output;
mod processes;
mod sockets;
mod status;
mod tls;
mod token;
mod torture;
