//! `instachatico-auth`: see `cli` for the commands.

fn main() -> std::process::ExitCode {
    instachatico_auth::cli::main()
}
