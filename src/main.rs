//! `stm32boot`: the command-line tool.

mod cli;

use clap::{CommandFactory, FromArgMatches};
use cli::args::Cli;
use cli::output::Bars;
use serde_json::json;
use std::process::ExitCode;

/// Exit codes scripts can rely on.
fn exit_code(err: &anyhow::Error) -> u8 {
    err.downcast_ref::<stm32boot::Error>()
        .map_or(1, stm32boot::Error::exit_code)
}

fn error_code(err: &anyhow::Error) -> &'static str {
    err.downcast_ref::<stm32boot::Error>()
        .map(|e| e.code())
        .unwrap_or("error")
}

/// Print a result line; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn findings(err: &anyhow::Error) -> Vec<stm32boot::Finding> {
    match err.downcast_ref::<stm32boot::Error>() {
        Some(stm32boot::Error::Diagnosed { findings, .. }) => findings.clone(),
        _ => Vec::new(),
    }
}

/// In a gang child: the chip's unique ID in the JSON result, for the parent's summary.
fn with_uid(v: &mut serde_json::Value) {
    if let (Some(uid), Some(obj)) = (cli::gang::uid(), v.as_object_mut()) {
        obj.entry("uid").or_insert_with(|| json!(uid));
    }
}

fn main() -> ExitCode {
    // Parsed in two steps so that the matches can say which connection options came from the
    // command line or the environment (the rest may come from stm32boot.toml).
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut Cli::command()).exit(),
    };
    let filter = match cli.verbose {
        0 => "warn",
        1 => "stm32boot=debug",
        _ => "stm32boot=trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::settings::install(&matches, &cli);
    let mut bars = Bars::new(cli.json, cli.quiet);
    // Several ports: gang mode runs the command once per port, in child processes.
    let result = match cli::gang::prepare(&matches, &mut bars) {
        Ok(cli::gang::Plan::Gang(ports)) => match cli::gang::run(&cli, &ports) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Ok(cli::gang::Plan::Single) => cli::run::run(&cli, &mut bars),
        Err(e) => Err(e),
    };
    match result {
        Ok(outcome) => {
            if cli.json {
                let mut v = json!({ "ok": true });
                if let (Some(obj), serde_json::Value::Object(extra)) =
                    (v.as_object_mut(), outcome.json)
                {
                    obj.extend(extra);
                    obj.insert("notes".into(), json!(bars.notes));
                }
                with_uid(&mut v);
                print_out(&v.to_string());
            } else if !cli.quiet && !outcome.text.is_empty() {
                print_out(&outcome.text);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            let code = exit_code(&err);
            if cli.json {
                let mut v = json!({ "ok": false, "error": { "code": error_code(&err), "message": format!("{err:#}"), "exit_code": code, "findings": findings(&err) }, "notes": bars.notes });
                with_uid(&mut v);
                print_out(&v.to_string());
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}
