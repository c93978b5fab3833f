//! The crmsync command: parse arguments, run one job, print the error with
//! its causes, and exit with the contract's code.

use clap::Parser;

// Backfill and sync move millions of short-lived values; glibc's malloc
// spent a fifth of a backfill's CPU consolidating and freeing them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = crmsync::cli::Cli::parse();
    let code = match crmsync::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("crmsync: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            crmsync::exit_code(&err)
        }
    };
    std::process::exit(code);
}
