//! `shadow`: parse, run, and exit with the code the error names (see `shadow --help`).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = shadow_cli::Cli::parse();
    let mut out = std::io::stdout();
    match shadow_cli::run(cli, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadow: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
