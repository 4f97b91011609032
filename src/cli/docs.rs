//! `stm32boot completions` and `stm32boot man`: shell completions and manual pages, generated
//! from the command-line definition so that they never fall behind it.

use super::args::Cli;
use super::run::Outcome;
use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Options of `stm32boot completions`.
#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for. For example, bash: `stm32boot completions bash >
    /// ~/.local/share/bash-completion/completions/stm32boot`; zsh: write `_stm32boot` into a
    /// directory on $fpath; fish: `~/.config/fish/completions/stm32boot.fish`.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Options of `stm32boot man`.
#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// Write `stm32boot.1` and a page per subcommand (`stm32boot-write.1`, …) into this
    /// directory, which is created if needed; without it, print the main page on stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Print the completion script for a shell.
pub fn completions(args: &CompletionsArgs) -> Result<Outcome> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut script);
    let script = String::from_utf8(script).context("the completion script is not UTF-8")?;
    Ok(Outcome {
        text: script.trim_end_matches('\n').to_string(),
        json: json!({ "shell": args.shell.to_string(), "script": script }),
    })
}

/// Print the main manual page, or write all of them into a directory.
pub fn man(args: &ManArgs) -> Result<Outcome> {
    let cmd = Cli::command();
    let Some(dir) = &args.out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .context("cannot render the manual page")?;
        let page = String::from_utf8(page).context("the manual page is not UTF-8")?;
        return Ok(Outcome {
            text: page.trim_end_matches('\n').to_string(),
            json: json!({ "page": page }),
        });
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)?;
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    Ok(Outcome {
        text: format!(
            "wrote {} manual pages to {} (stm32boot.1 and one per subcommand)",
            written.len(),
            dir.display()
        ),
        json: json!({ "dir": dir.display().to_string(), "pages": names }),
    })
}

/// Write the page of `cmd`, then those of its visible subcommands, depth first.
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let path = clap_mangen::Man::new(cmd.clone())
        .generate_to(dir)
        .with_context(|| format!("cannot write a manual page into {}", dir.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
