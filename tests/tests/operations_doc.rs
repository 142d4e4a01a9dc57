//! `docs/operations.md`'s configuration reference against the programs' real option definitions:
//! the tables must not drift from the clap `Cli`s.
//!
//! For each program's `Cli` (master, node proxy, edge proxy), every argument's long flag appears in that program's table with the same
//! environment variable, and with the default its help text states (`[default: X]`, or `unset`
//! when the help states none); the table lists no flag and no variable the program lacks. Options
//! that are environment-only (secrets, `#[arg(skip)]` in the `Cli` so they never show in `ps`) are
//! listed in [`ENV_ONLY`]: the table must have them, the config struct must accept their key, and
//! the binary must read the variable.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use clap::CommandFactory;
use shadow_common::config::load;
use shadow_master::config::MasterConfig;
use shadow_nodeproxy::config::NodeConfig;

/// One program's environment-only options: (program, [(variable, config key)], the binary's
/// source file that reads them).
type EnvOnly = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// Environment-only options per program. They are `#[arg(skip)]` in the `Cli`, so clap cannot
/// list them.
const ENV_ONLY: &[EnvOnly] = &[
    (
        "shadow-master",
        &[("SHADOW_API_TOKEN", "api_token")],
        "master/src/bin/shadow-master.rs",
    ),
    (
        "shadow-nodeproxy",
        &[
            ("SHADOW_API_TOKEN", "api_token"),
            ("SHADOW_S3_ACCESS_KEY", "s3_access_key"),
            ("SHADOW_S3_SECRET_KEY", "s3_secret_key"),
            ("SHADOW_DO_TOKEN", "do_token"),
        ],
        "nodeproxy/src/bin/shadow-nodeproxy.rs",
    ),
    (
        "shadow-edgeproxy",
        &[
            ("SHADOW_API_TOKEN", "api_token"),
            ("SHADOW_DO_TOKEN", "do_token"),
        ],
        "edgeproxy/src/bin/shadow-edgeproxy.rs",
    ),
];

/// What the doc's flag column says for an environment-only option.
const ENV_ONLY_FLAG: &str = "(env only)";
/// What the doc's default column says for an option whose help states no default.
const NO_DEFAULT: &str = "unset";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read_doc() -> String {
    let path = repo_root().join("docs/operations.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One row of a program's table.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    flag: String,
    env: String,
    default: String,
}

/// One option as the program defines it: the same three facts.
type Opt = Row;

fn strip_cell(cell: &str) -> String {
    cell.trim().trim_matches('`').trim().to_string()
}

/// The first table under the heading `### \`<program>\`` (up to the next heading).
fn table_for(doc: &str, program: &str) -> Vec<Row> {
    let heading = format!("### `{program}`");
    let mut lines = doc.lines().skip_while(|l| l.trim() != heading);
    assert!(
        lines.next().is_some(),
        "docs/operations.md has no heading {heading:?} for {program}'s options"
    );
    let section: Vec<&str> = lines.take_while(|l| !l.starts_with('#')).collect();
    let table: Vec<&str> = section
        .iter()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .copied()
        .collect();
    assert!(
        table.len() > 2,
        "no table of options under {heading:?} in docs/operations.md"
    );
    let header: Vec<String> = cells(table[0]);
    assert_eq!(
        header.first().map(String::as_str),
        Some("flag"),
        "{program}'s table must start with the columns flag | environment variable | default: {header:?}"
    );
    table[2..]
        .iter()
        .map(|line| {
            let c = cells(line);
            assert!(
                c.len() >= 3,
                "{program}'s table row has fewer than 3 cells: {line:?}"
            );
            Row {
                flag: strip_cell(&c[0]),
                env: strip_cell(&c[1]),
                default: strip_cell(&c[2]),
            }
        })
        .collect()
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

/// The `[default: X]` its help states, or [`NO_DEFAULT`].
fn stated_default(help: &str) -> String {
    match help.find("[default: ") {
        Some(start) => {
            let rest = &help[start + "[default: ".len()..];
            let end = rest
                .find(']')
                .unwrap_or_else(|| panic!("unclosed [default: in help {help:?}"));
            rest[..end].trim().to_string()
        }
        None => NO_DEFAULT.to_string(),
    }
}

fn options(cmd: clap::Command) -> Vec<Opt> {
    cmd.get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| {
            let flag = format!(
                "--{}",
                a.get_long()
                    .unwrap_or_else(|| panic!("argument {} has no long flag", a.get_id()))
            );
            let env = a
                .get_env()
                .unwrap_or_else(|| panic!("{flag} has no SHADOW_* environment variable"))
                .to_string_lossy()
                .into_owned();
            let help = [a.get_help(), a.get_long_help()]
                .into_iter()
                .flatten()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(" ");
            Opt {
                flag,
                env,
                default: stated_default(&help),
            }
        })
        .collect()
}

fn env_only(program: &str) -> (&'static [(&'static str, &'static str)], &'static str) {
    ENV_ONLY
        .iter()
        .find(|(p, _, _)| *p == program)
        .map(|(_, vars, src)| (*vars, *src))
        .unwrap_or((&[], ""))
}

/// Compares one program's table with its options; returns every discrepancy.
fn check_program(doc: &str, program: &str, cmd: clap::Command) -> Vec<String> {
    let mut errors = Vec::new();
    let rows = table_for(doc, program);
    let opts = options(cmd);
    let (env_vars, _) = env_only(program);

    let mut seen_flags = BTreeSet::new();
    let mut seen_envs = BTreeSet::new();
    for row in &rows {
        if row.flag != ENV_ONLY_FLAG && !seen_flags.insert(row.flag.clone()) {
            errors.push(format!("{program}: {} is listed twice", row.flag));
        }
        if !seen_envs.insert(row.env.clone()) {
            errors.push(format!("{program}: {} is listed twice", row.env));
        }
    }

    for opt in &opts {
        match rows.iter().find(|r| r.flag == opt.flag) {
            None => errors.push(format!(
                "{program}: {} ({}) is missing from docs/operations.md",
                opt.flag, opt.env
            )),
            Some(row) => {
                if row.env != opt.env {
                    errors.push(format!(
                        "{program}: {} reads {} but the doc says {}",
                        opt.flag, opt.env, row.env
                    ));
                }
                if row.default != opt.default {
                    errors.push(format!(
                        "{program}: {} defaults to {:?} (its help) but the doc says {:?}",
                        opt.flag, opt.default, row.default
                    ));
                }
            }
        }
    }

    for (var, _) in env_vars {
        match rows.iter().find(|r| r.env == *var) {
            None => errors.push(format!(
                "{program}: the environment-only {var} is missing from docs/operations.md"
            )),
            Some(row) => {
                if row.flag != ENV_ONLY_FLAG {
                    errors.push(format!(
                        "{program}: {var} is environment-only; its flag cell must be {ENV_ONLY_FLAG:?}, not {:?}",
                        row.flag
                    ));
                }
                if row.default != NO_DEFAULT {
                    errors.push(format!(
                        "{program}: {var} has no default; the doc must say {NO_DEFAULT:?}, not {:?}",
                        row.default
                    ));
                }
            }
        }
    }

    for row in &rows {
        if row.flag == ENV_ONLY_FLAG {
            if !env_vars.iter().any(|(v, _)| *v == row.env) {
                errors.push(format!(
                    "{program}: the doc lists {} as environment-only, but it is not one (add it to ENV_ONLY if it became one)",
                    row.env
                ));
            }
        } else if !opts.iter().any(|o| o.flag == row.flag) {
            errors.push(format!(
                "{program}: the doc lists {} ({}), which the program does not have",
                row.flag, row.env
            ));
        }
    }
    errors
}

#[test]
fn master_table_matches_its_cli() {
    let errors = check_program(
        &read_doc(),
        "shadow-master",
        shadow_master::config::Cli::command(),
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn nodeproxy_table_matches_its_cli() {
    let errors = check_program(
        &read_doc(),
        "shadow-nodeproxy",
        shadow_nodeproxy::config::Cli::command(),
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn edgeproxy_table_matches_its_cli() {
    let errors = check_program(
        &read_doc(),
        "shadow-edgeproxy",
        shadow_edgeproxy::config::Cli::command(),
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The environment-only options are real: the config struct accepts their key (it denies
/// unknown ones) and the binary reads the variable.
#[test]
fn env_only_options_are_real() {
    let dir = tempfile::tempdir().expect("temp dir");
    let no_overrides = BTreeMap::<String, String>::new();
    for (program, vars, src) in ENV_ONLY {
        let source = std::fs::read_to_string(repo_root().join(src))
            .unwrap_or_else(|e| panic!("cannot read {src}: {e}"));
        for (var, key) in *vars {
            assert!(
                source.contains(&format!("\"{var}\"")),
                "{program}: {src} does not read {var}"
            );
            let file = dir.path().join(format!("{program}-{key}.toml"));
            std::fs::write(&file, format!("{key} = \"x\"\n")).expect("write toml");
            let accepted = match *program {
                "shadow-master" => load::<MasterConfig>(Some(&file), &no_overrides).map(drop),
                "shadow-nodeproxy" => load::<NodeConfig>(Some(&file), &no_overrides).map(drop),
                "shadow-edgeproxy" => {
                    load::<shadow_edgeproxy::EdgeConfig>(Some(&file), &no_overrides).map(drop)
                }
                other => panic!("ENV_ONLY names {other}, which this test does not know"),
            };
            if let Err(e) = accepted {
                panic!("{program}: the config key {key} (for {var}) is not accepted: {e}");
            }
        }
    }
}

/// The parser itself, on a small table, so a broken doc fails with a clear message rather than
/// passing vacuously.
#[test]
fn the_table_parser_reads_rows_and_defaults() {
    let doc = "# x\n\n### `prog`\n\ntext\n\n| flag | environment variable | default | meaning |\n| --- | --- | --- | --- |\n| `--listen` | `SHADOW_X_LISTEN` | `127.0.0.1:1` | where |\n| (env only) | `SHADOW_API_TOKEN` | unset | token |\n\n## next\n";
    let rows = table_for(doc, "prog");
    assert_eq!(
        rows,
        vec![
            Row {
                flag: "--listen".into(),
                env: "SHADOW_X_LISTEN".into(),
                default: "127.0.0.1:1".into()
            },
            Row {
                flag: ENV_ONLY_FLAG.into(),
                env: "SHADOW_API_TOKEN".into(),
                default: NO_DEFAULT.into()
            },
        ]
    );
    assert_eq!(
        stated_default("Address [default: 127.0.0.1:7070]"),
        "127.0.0.1:7070"
    );
    assert_eq!(stated_default("Bucket (unset = none)"), NO_DEFAULT);
    // Every program with a Cli has at least its flags in the real doc.
    assert!(table_for(&read_doc(), "shadow-master").len() >= 4);
}
