//! Command-line parsing and dispatch. The work itself lives in the library modules.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "retina", version, about = "Open trained openretina retina models and show what each neuron computes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {}

/// Run the command line; returns the process exit code (0 ok, 2 for any user-facing error).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match cli.command {}
}
