//! pglock: run a command while holding a PostgreSQL advisory lock.
//!
//! The run path reads top-down: [`cli`] (clap) → [`options`] (typed) → [`run`] (wait, run,
//! release) → [`supervise`] (the command's loop); [`exit`] turns the outcome into a number.
//!
//! Layers, top to bottom; a module uses (`use crate::...`) only its own layer and those below,
//! and a layer's modules use each other without a cycle (tests/it/layers.rs checks it):
//!
//! 1. [`docs`] (`generate-docs`), and this file, which only dispatches;
//! 2. [`run`]: takes the options;
//! 3. [`options`]: built from clap's parse, so that nothing below it knows clap, and turns the
//!    subcommands into the requests [`report`], [`ledger`] and [`doctor`] take;
//! 4. [`cli`]: the clap definition (it parses `--ledger` with [`ledger::table`]);
//! 5. [`supervise`]: the command's loop, with the [`supervise::Fencing`] and job it is given;
//! 6. [`lock`], [`report`], [`ledger`] and [`doctor`];
//! 7. [`pg`];
//! 8. [`conninfo`], [`tls`] and [`ping`];
//! 9. [`appname`], [`key`], [`exit`], [`log`], [`duration`], [`lease`], [`clock`], [`output`]
//!    and [`capture`].

mod appname;
mod capture;
mod cli;
mod clock;
mod conninfo;
mod docs;
mod doctor;
mod duration;
mod exit;
mod key;
mod lease;
mod ledger;
mod lock;
mod log;
mod options;
mod output;
mod pg;
mod ping;
mod report;
mod run;
mod supervise;
mod tls;

use clap::FromArgMatches;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The wait guard is pglock too, started by a waiting pglock; it is no command for users.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(supervise::wait_guard::ARG.as_ref()) {
        let app_name = args.next().unwrap_or_default();
        let backend = args
            .next()
            .and_then(|p| p.to_str()?.parse().ok())
            .unwrap_or(0);
        return ExitCode::from(supervise::wait_guard::serve(
            &app_name.to_string_lossy(),
            backend,
        ));
    }
    let args = cli::hoist(std::env::args_os().collect());
    let matches = match docs::command().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(e) => return usage(e, &args),
    };
    if let Some(generate) = matches.subcommand_matches(docs::GENERATE) {
        return failed_or(docs::run(generate));
    }
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage(e, &args),
    };
    if let Err(e) = cli::check_combinations(&cli)
        .and_then(|()| cli::check_lease(&cli))
        .and_then(|()| cli::check_ping(&cli))
        .and_then(|()| cli::check_deploy(&cli))
    {
        return usage(e, &args);
    }
    log::set_verbose(cli.verbose);
    match &cli.sub {
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
            failed_or(match options::Subcommand::from_cli(sub) {
                options::Subcommand::Report(request) => report::command(&request),
                options::Subcommand::Ledger(request) => ledger::command(&request),
                options::Subcommand::Doctor(request) => doctor::command(&request),
            })
        }
        None => {
            let opts = options::RunOptions::from_cli(&cli);
            let code = match run::run(&opts) {
                Ok(outcome) => {
                    if let Some(message) = outcome.message() {
                        warn!("{message}");
                    }
                    Ok(outcome.code(cli.conflict_exit_code))
                }
                Err(e) => Err(e),
            };
            failed_or(code)
        }
    }
}

/// The exit status for a result: the code itself, or the failure's after its `pglock:` line.
fn failed_or(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let message = exit::message(&err);
            if !message.is_empty() {
                warn!("{message}");
            }
            ExitCode::from(exit::code_for(&err))
        }
    }
}

/// clap's own text (usage and all), then the `pglock:` line every error ends with.
fn usage(e: clap::Error, args: &[std::ffi::OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return ExitCode::from(e.exit_code() as u8);
    }
    let line = cli::one_line(&e.to_string());
    warn!("usage error: {line}; see 'pglock --help'");
    // A monitoring plugin's usage errors are UNKNOWN (3), not 2 (CRITICAL).
    if cli::invoked(args).as_deref() == Some("check") {
        return ExitCode::from(ledger::check::usage(&line));
    }
    ExitCode::from(exit::USAGE)
}
