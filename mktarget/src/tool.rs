//! What every krops tool's `main` does with the result of its `run`.

use std::io::ErrorKind;
use std::process::ExitCode;

/// A tool's `main`: handles interrupts (see [`crate::interrupt`]) from the
/// start, then runs `run` and ends as [`finish`] says.
pub fn main(tool: &'static str, run: impl FnOnce() -> anyhow::Result<ExitCode>) -> ExitCode {
    crate::interrupt::install(tool);
    finish(tool, run())
}

/// The exit status of a mistake on the command line, clap's own included.
pub const USAGE_EXIT: u8 = 2;

/// A mistake on the command line that parsing cannot see (options that do
/// not go together, one that needs a terminal, a `--json-file` that is a
/// directory): [`finish`] exits [`USAGE_EXIT`] for it, as clap does for
/// the mistakes it finds, wherever it is in an error's context chain.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `bail!` for a [`UsageError`]: `return Err(usage(format!(…)))`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Whether `err` is, or was caused by, a [`UsageError`].
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<UsageError>())
}

/// Prints `TOOL: error: …` with the whole context chain and exits non-zero
/// (2 for a [`UsageError`], else 1); a closed stdout pipe (`tool | head`)
/// is not an error.
pub fn finish(tool: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // A failure an interrupt caused is the handler's to report.
            crate::interrupt::wait_if_interrupted();
            eprintln!("{tool}: error: {err:#}");
            if is_usage(&err) {
                ExitCode::from(USAGE_EXIT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Parses the command line; a mistake in it is reported as `TOOL: error: …`
/// like every other error (clap's own usage lines follow), exit status 2.
pub fn parse<P: clap::Parser>(tool: &str) -> P {
    match P::try_parse() {
        Ok(parsed) => parsed,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let text = err.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("{tool}: error: {text}");
            std::process::exit(err.exit_code());
        }
    }
}

/// One example of a tool's use, shown at the end of its `--help` and in the
/// EXAMPLES section of its man page: what it does, and a command line that
/// works as written, given the files it names (`sources.json`,
/// `fleet.json`; tests/docs.rs runs every one).
#[derive(Clone, Copy, Debug)]
pub struct Example {
    pub what: &'static str,
    pub line: &'static str,
}

/// A tool's `after_help`: its examples under a heading styled like clap's
/// own (the style is dropped when stdout is not a terminal).
pub fn examples_help(examples: &[Example]) -> clap::builder::StyledStr {
    let heading = *clap::builder::Styles::default().get_header();
    let mut text = format!("{heading}Examples:{heading:#}\n");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(&format!("  {}\n    $ {}\n", example.what, example.line));
    }
    text.into()
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_usage_error_is_known_under_any_context() {
        let err = Err::<(), _>(usage("--check needs --confirm-timeout"))
            .context("krops-deploy")
            .unwrap_err();
        assert!(is_usage(&err));
        assert_eq!(
            format!("{err:#}"),
            "krops-deploy: --check needs --confirm-timeout"
        );
        assert!(!is_usage(&anyhow::anyhow!("a source failed")));
    }
}
