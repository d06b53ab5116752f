//! `vsicctl`: the control plane of the VSIC storage controller.
//!
//! Output goes to stdout (tables, or one JSON document with `--json`);
//! failures go to stderr as `vsicctl: <what failed>: <why>` and set the exit
//! code: 1 when an operation failed, 2 when the command line is unusable.

mod capfile;
mod cli;
mod commands;
mod failure;
mod report;
mod table;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = cli::Cli::parse();
    match commands::run(&cli) {
        Ok(report) => {
            if cli.json {
                println!("{}", pretty(&report.json));
            } else {
                print!("{}", report.human);
            }
        }
        Err(failure) => {
            eprintln!("{}", failure.stderr_line());
            if cli.json {
                println!("{}", pretty(&failure.to_json()));
            }
            std::process::exit(failure.exit_code());
        }
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
