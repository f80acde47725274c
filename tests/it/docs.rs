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

/// Issue 18, item 14: the docs name the ledger's connections as pglock names them,
/// `pglock-ledger@HOST:PID` (an observer: no key, so it never reads as a lock holder's
/// `pglock:KEY@HOST:PID`), and lists the name with the others.
#[test]
fn readme_names_the_ledger_connection_as_pglock_does() {
    let readme: String = markdown_files()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
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

/// The Markdown files of the documentation: README.md and doc/*.md.
fn markdown_files() -> Vec<std::path::PathBuf> {
    let mut files = vec![repo().join("README.md")];
    if let Ok(dir) = std::fs::read_dir(repo().join("doc")) {
        let mut docs: Vec<_> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
    }
    files
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to
/// `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks), numbered as GitHub numbers
/// repeats.
fn anchors(text: &str) -> Vec<String> {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = anchor(line.trim_start_matches('#'));
        let n = seen.entry(base.clone()).or_default();
        out.push(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The relative link targets in a Markdown file: `](target)`, outside code blocks and spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans, where `](` is not a link.
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if !target.contains("://") && !target.starts_with("mailto:") {
                out.push(target.to_string());
            }
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves_to_a_file_and_heading() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !dest.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                let dest_text = std::fs::read_to_string(&dest).unwrap_or_default();
                if !anchors(&dest_text).iter().any(|a| a == fragment) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_long_option_is_in_the_man_page_and_in_the_readme_or_a_guide() {
    let help = |args: &[&str]| run(pglock().args(args)).stdout();
    let mut options = std::collections::BTreeSet::new();
    let subcommands = [
        "status", "list", "key", "init", "history", "check", "metrics", "prune", "doctor",
    ];
    let mut pages = vec![help(&["--help"])];
    for sub in subcommands {
        pages.push(help(&[sub, "--help"]));
    }
    for page in &pages {
        for word in page.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=') {
            if let Some(name) = word.strip_prefix("--")
                && name.len() > 1
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                && !matches!(name, "help" | "version")
            {
                options.insert(format!("--{name}"));
            }
        }
    }
    assert!(options.len() > 30, "{options:?}");
    let man = std::fs::read_to_string(repo().join("man/pglock.1"))
        .unwrap()
        .replace("\\-", "-");
    let docs: String = markdown_files()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let missing: Vec<_> = options
        .iter()
        .filter(|o| !man.contains(o.as_str()) || !docs.contains(o.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "options missing from the man page or the docs: {missing:?}"
    );
}
