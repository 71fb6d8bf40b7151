//! `novactl`: the NovaCron controller's command-line client (see `novactl --help`).

use std::process::ExitCode;

use clap::Parser;
use novacron_controller::ctl::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("novactl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("novactl: {e}");
            ExitCode::FAILURE
        }
    }
}
