//! The stand-in as a program: `cargo run -p mssql-standin -- --pg URL
//! --port 1433 --user sa --password PW --timezone ZONE`.

use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

/// A SQL Server stand-in (TDS 7.4) in front of a PostgreSQL database, for
/// trying and testing crmsync without a SQL Server.
#[derive(Parser)]
#[command(name = "mssql-standin", version)]
struct Args {
    /// PostgreSQL URL of the database that holds the stand-in's data.
    #[arg(long, env = "MSSQL_STANDIN_PG")]
    pg: String,
    /// TCP port to listen on.
    #[arg(long, default_value_t = 1433)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// The SQL login clients must use.
    #[arg(long, default_value = "sa")]
    user: String,
    /// Its password.
    #[arg(long, env = "MSSQL_STANDIN_PASSWORD", hide_env_values = true)]
    password: String,
    /// IANA time zone of GETDATE() (the SQL Server machine's local time).
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Offer TLS in PRELOGIN with a self-signed certificate.
    #[arg(long)]
    tls: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.timezone.parse::<chrono_tz::Tz>().is_err() {
        eprintln!(
            "mssql-standin: --timezone {:?} is not an IANA time zone (e.g. Europe/London)",
            args.timezone
        );
        return ExitCode::from(2);
    }
    let config = mssql_standin::Config {
        pg_url: args.pg,
        user: args.user,
        password: args.password,
        timezone: args.timezone,
        tls: args.tls,
    };
    let addr = SocketAddr::new(args.bind, args.port);
    let standin = match mssql_standin::start(config, addr).await {
        Ok(s) => s,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("mssql-standin: cannot start: {msg}");
            return ExitCode::from(1);
        }
    };
    println!("mssql-standin listening on {}", standin.addr);
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
