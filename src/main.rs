//! The crmsync command: parse arguments, run one job, print the error with
//! its causes, and exit with the contract's code.

use clap::Parser;

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
