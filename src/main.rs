//! pglock: run a command while holding a PostgreSQL advisory lock.

mod cli;
mod conninfo;
mod deadman;
mod duration;
mod exit;
mod key;
mod lock;
mod log;
mod run;
mod semaphore;
mod signals;
mod supervise;
mod tls;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    log::set_verbose(cli.verbose);
    match run::run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let message = exit::message(&err);
            if !message.is_empty() {
                eprintln!("pglock: {message}");
            }
            ExitCode::from(exit::code_for(&err, cli.conflict_exit_code))
        }
    }
}
