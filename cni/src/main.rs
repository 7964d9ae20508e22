//! `weft-cni` (installed as `weft`): reads the `CNI_*` environment and stdin, runs the
//! plugin, prints its answer and exits non-zero on failure, as the CNI spec says. The
//! work is in the library.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let var = |k: &str| std::env::var(k).ok();
    let outcome = match weft_cni::read_stdin(&mut std::io::stdin()) {
        Ok(input) => weft_cni::run(&var, &input),
        Err(e) => weft_cni::Outcome {
            stdout: e.json(weft_cni::spec::LATEST).to_string(),
            success: false,
        },
    };
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = writeln!(out, "{}", outcome.stdout);
    }
    let _ = out.flush();
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
