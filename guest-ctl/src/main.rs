//! `vsicctl`: the control plane of the VSIC storage controller.
//!
//! Output goes to stdout (tables, or one JSON document with `--json`);
//! failures go to stderr as `vsicctl: <what failed>: <why>` and set the exit
//! code: 1 when an operation failed, 2 when the command line is unusable.

mod authority;
mod capfile;
mod cli;
mod commands;
mod failure;
mod functions;
mod guest;
mod lock;
mod mgmt;
mod pf;
mod report;
mod store;
mod table;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => usage_error(err),
    };
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

/// Reports a command line clap rejected (or a help request) and exits.
/// Scripts using `--json` get the error object on stdout as for any failure.
fn usage_error(err: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let is_help = matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) || err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
    if !is_help && std::env::args_os().any(|a| a == "--json") {
        let rendered = err.render().to_string();
        // The first paragraph is the complaint; usage and hints follow.
        let first = rendered.split("\n\n").next().unwrap_or_default();
        let words: Vec<&str> = first.split_whitespace().collect();
        let message = words.join(" ");
        let message = message
            .strip_prefix("error: ")
            .unwrap_or(&message)
            .to_string();
        let failure = failure::Failure::usage("parsing the command line", message);
        println!("{}", pretty(&failure.to_json()));
    }
    err.exit()
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
