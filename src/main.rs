//! pglock: run a command while holding a PostgreSQL advisory lock.

mod classify;
mod cli;
mod conninfo;
mod deadman;
mod docs;
mod duration;
mod exit;
mod key;
mod lock;
mod log;
mod retry;
mod run;
mod semaphore;
mod signals;
mod status;
mod supervise;
mod tls;
mod watch;

use clap::FromArgMatches;
use std::process::ExitCode;

fn main() -> ExitCode {
    let matches = docs::command().get_matches();
    if let Some(generate) = matches.subcommand_matches(docs::GENERATE) {
        return finish(docs::run(generate), exit::CONFLICT_DEFAULT);
    }
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    log::set_verbose(cli.verbose);
    let result = match &cli.sub {
        Some(sub) => {
            // Reports end quietly when their reader goes away (`pglock list | head`), as ls
            // does; the lock-and-run form keeps ignoring SIGPIPE, since it must outlive its
            // command whatever happens to its output.
            // SAFETY: no other thread exists yet to race on the signal disposition.
            let _ = unsafe {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGPIPE,
                    nix::sys::signal::SigHandler::SigDfl,
                )
            };
            status::command(sub)
        }
        None => run::run(&cli),
    };
    finish(result, cli.conflict_exit_code)
}

fn finish(result: anyhow::Result<u8>, conflict_exit_code: u8) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let message = exit::message(&err);
            if !message.is_empty() {
                eprintln!("pglock: {message}");
            }
            ExitCode::from(exit::code_for(&err, conflict_exit_code))
        }
    }
}
