//! What every krops tool's `main` does with the result of its `run`.

use std::io::ErrorKind;
use std::process::ExitCode;

/// A tool's `main`: handles interrupts (see [`crate::interrupt`]) from the
/// start, then runs `run` and ends as [`finish`] says.
pub fn main(tool: &'static str, run: impl FnOnce() -> anyhow::Result<ExitCode>) -> ExitCode {
    crate::interrupt::install(tool);
    finish(tool, run())
}

/// Prints `TOOL: error: …` with the whole context chain and exits non-zero;
/// a closed stdout pipe (`tool | head`) is not an error.
pub fn finish(tool: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // A failure an interrupt caused is the handler's to report.
            crate::interrupt::wait_if_interrupted();
            eprintln!("{tool}: error: {err:#}");
            ExitCode::FAILURE
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
