//! The stand-in as a program, started the way the README says.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Kills the child process when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_serves_tiberius_with_the_documented_flags() {
    let pg = testkit::fresh_database("standin_bin").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_mssql-standin"))
            .args(["--pg", &pg, "--port", &port.to_string(), "--user", USER])
            .args(["--password", PASSWORD, "--timezone", "Europe/London"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the binary"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        first.trim(),
        format!("mssql-standin listening on 127.0.0.1:{port}")
    );
    let mut c = connect_with(port, PASSWORD)
        .await
        .expect("connect to the binary");
    assert_eq!(scalar::<i32>(&mut c, "SELECT 40 + 2").await, Some(42));
}

#[test]
fn binary_rejects_an_unknown_time_zone() {
    let out = Command::new(env!("CARGO_BIN_EXE_mssql-standin"))
        .args([
            "--pg",
            "postgres://127.0.0.1:1/none",
            "--password",
            "x",
            "--timezone",
            "Mars/Olympus",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Mars/Olympus"));
}
