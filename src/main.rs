//! Thin entry point: parse the command line, hand over to `cli` (which loads config and runs
//! `app` for `serve`/`dev`). Exit codes: 0 ok, 1 failure, 64 bad configuration or usage (or
//! `serve` on a node not yet initialised).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    lgsp::cli::main()
}
