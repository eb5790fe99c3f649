//! `dtma-sandbox`: the sandbox launcher on its own, so that each command pays for loading a
//! small program instead of the whole agent (src/exec/sandbox.rs). The same arguments as
//! `dtma sandbox-exec` (a leading `sandbox-exec` is accepted and skipped).

use std::process::ExitCode;

use dtma::exec::sandbox;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().map(|a| a == sandbox::SUBCOMMAND) == Some(true) {
        args.next();
    }
    let error = match sandbox::Launch::parse(args) {
        Ok(launch) => sandbox::exec(&launch),
        Err(e) => e,
    };
    eprintln!("dtma-sandbox: {error}");
    ExitCode::from(error.exit_code())
}
