//! The checked-in man page and shell completions: up to date with the clap definition, rendered
//! by man without warnings, and loadable by bash. No server needed.

use crate::util::*;
use std::path::Path;
use std::process::Command;

const REGENERATE: &str = "cargo run -q -- generate-docs";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn generated_files_are_up_to_date() {
    let env = TestEnv::new("docs");
    let dir = env.dir();
    let out = run(pglock().arg("generate-docs").arg(dir));
    out.assert_success();
    let listed = out.stdout();
    let mut stale = Vec::new();
    let mut count = 0;
    for written in listed.lines() {
        let rel = Path::new(written).strip_prefix(dir).unwrap();
        let fresh = std::fs::read(written).unwrap();
        count += 1;
        if std::fs::read(repo().join(rel)).ok().as_ref() != Some(&fresh) {
            stale.push(rel.display().to_string());
        }
    }
    assert_eq!(count, 6, "the man page and five completion files: {listed}");
    assert!(
        stale.is_empty(),
        "{} differ from what the current clap definition generates; regenerate them with:\n\n    \
         {REGENERATE}\n",
        stale.join(", ")
    );

    // Without DIR, run from another directory: the files go to the source tree (and, being up
    // to date, are left as they are), never into the current directory. Checked here, after the
    // staleness check, so that it cannot refresh a stale file before that check reads it.
    let elsewhere = env.path("cwd");
    std::fs::create_dir(&elsewhere).unwrap();
    let out = run(pglock().arg("generate-docs").current_dir(&elsewhere));
    out.assert_success();
    let listed = out.stdout();
    assert_eq!(listed.lines().count(), 6, "{listed}");
    for written in listed.lines() {
        assert!(Path::new(written).starts_with(repo()), "{written}");
    }
    let litter: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().collect();
    assert!(litter.is_empty(), "{litter:?}");
}

#[test]
fn man_page_renders_without_warnings() {
    need("man", "man-db groff-base");
    let out = run(Command::new("man")
        .args(["--warnings", "-l"])
        .arg(repo().join("man/pglock.1"))
        .env("MANWIDTH", "80")
        .env("LC_ALL", "C.UTF-8")
        .env("MANPAGER", "cat"));
    out.assert_success().assert_stderr("");
    let text = out.stdout();
    for heading in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        assert!(
            text.lines().any(|l| l == heading),
            "no {heading} section in\n{text}"
        );
    }
    for needle in [
        "flock(1)",
        "psql(1)",
        "PGLOCK_DATABASE_URL",
        "PGLOCK_LOCK_ID",
        "128+N",
        "the lock is free",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[test]
fn bash_loads_the_completion_and_completes_subcommands() {
    let script = format!(
        "set -e; source '{}'; complete -p pglock; \
         COMP_WORDS=(pglock st); COMP_CWORD=1; _pglock pglock st pglock; echo \"${{COMPREPLY[@]}}\"; \
         COMP_WORDS=(pglock --sc); COMP_CWORD=1; _pglock pglock --sc pglock; echo \"${{COMPREPLY[@]}}\"",
        repo().join("completions/pglock.bash").display()
    );
    let out = run(Command::new("bash").args(["--norc", "--noprofile", "-c", &script]));
    out.assert_success();
    let text = out.stdout();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(" pglock"), "{text}");
    assert_eq!(lines[1], "status", "{text}");
    assert_eq!(lines[2], "--scope", "{text}");
}

/// Issue 18, item 14: the README names the ledger's connections as pglock names them,
/// `pglock-ledger@HOST:PID` (an observer: no key, so it never reads as a lock holder's
/// `pglock:KEY@HOST:PID`), and lists the name with the others.
#[test]
fn readme_names_the_ledger_connection_as_pglock_does() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mentions: Vec<&str> = readme
        .match_indices("pglock-ledger")
        .map(|(at, _)| &readme[at..(at + 20).min(readme.len())])
        .collect();
    assert!(
        mentions
            .iter()
            .any(|m| m.starts_with("pglock-ledger@<host>")),
        "the application_name table lacks pglock-ledger: {mentions:?}"
    );
    for mention in &mentions {
        assert!(mention.starts_with("pglock-ledger@"), "{mention:?}");
    }
}
