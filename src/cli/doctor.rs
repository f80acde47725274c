//! `pglock doctor`'s flags: the connection, and the run flags whose safety it judges.

use super::{Hash, Server};
use crate::duration;
use crate::key;
use crate::ledger::table::{self, Table};
use clap::Args;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The lock the runs will take, as given to pglock --key (optional: named in the report).
    #[arg(short, long, value_name = "KEY", value_parser = key::check_key, conflicts_with = "lock_id")]
    pub key: Option<String>,

    /// A raw lock id instead of a key.
    #[arg(long, value_name = "ID", value_parser = key::LockId::parse, allow_hyphen_values = true)]
    pub lock_id: Option<key::LockId>,

    #[command(flatten)]
    pub hash: Hash,

    /// The scope the runs will use: a session lock through a transaction pooler is unsafe.
    #[arg(long, value_enum, default_value_t = super::Scope::Session)]
    pub scope: super::Scope,

    /// The runs record themselves: check the ledger table.
    #[arg(long)]
    pub record: bool,

    /// The runs use --once-per (implies --record): check the ledger table.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub once_per: Option<Duration>,

    /// The ledger table to check.
    #[arg(long = "ledger", value_name = "TABLE", env = "PGLOCK_LEDGER", hide_env_values = true,
          default_value = table::DEFAULT, value_parser = Table::parse)]
    pub ledger: Table,

    /// The runs' --limit (a semaphore takes one connection per holder and waiter).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub limit: u16,

    /// The runs' --check-interval, for the lease they produce.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration::parse)]
    pub check_interval: Duration,

    /// The runs' --kill-after, for the lease they produce.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    pub kill_after: Duration,

    /// The runs' --lease (0: none).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub lease: Option<Duration>,

    /// How many hosts will run pglock against this server at once, to judge the connection
    /// limits.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub fleet: Option<u32>,

    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub server: Server,
}
