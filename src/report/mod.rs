//! Who holds what. Every advisory lock's holders and waiters are rows of pg_locks, and their
//! sessions rows of pg_stat_activity; this layer reads them and says who they are.
//!
//! - `sql`: every statement of the layer, from numbers and static text only.
//! - `model`: the pg_locks rows read by column name, and what each lock is to pglock (a key's,
//!   a raw id's, or a slot or the queue of a `--limit` semaphore), learnt from the
//!   application_names of pglock's sessions (built and parsed in `crate::appname`).
//! - `render`: the holder phrase, tables and JSON.
//! - `commands`: the `status`, `list` and `key` subcommands.
//! - `conflict` and `watch`: what the run path shows when the lock is busy and while it waits.
//!
//! It sits above the lock layer (it queries through `lock::Session`) and below `run`, which
//! uses [`conflict_message`] and [`Watch`]; nothing below imports it.

mod commands;
mod conflict;
mod model;
mod render;
mod sql;
mod watch;

pub use commands::{KeyArgs, ListArgs, Request, StatusArgs, command};
pub use conflict::conflict_message;
pub use watch::{Note, Wait, Watch};
