//! The `lanes` binary; everything lives in the library (see `cli`).

fn main() -> std::process::ExitCode {
    lanes::cli::main()
}
