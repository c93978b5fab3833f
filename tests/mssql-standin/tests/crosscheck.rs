//! Conformance with two TDS clients that share no code with tiberius:
//! FreeTDS `tsql` (Debian freetds-bin) and python-tds (PyPI). crm_schema.sql
//! is loaded unchanged, rows are written through tiberius, and all three
//! clients must read the same values. Each check is skipped, saying why,
//! only when its client is not installed.

use crate::support::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// The query all clients run; the native datetime column is also read as
/// text (style 121), since tsql prints datetime to the minute.
const QUERY: &str =
    "SELECT c.Comp_CompanyId, c.Comp_Name, c.comp_promote, c.Comp_Deleted, c.Comp_SecTerr, \
     c.Comp_UpdatedDate, CONVERT(varchar(23), c.Comp_UpdatedDate, 121) AS upd, \
     o.Oppo_Forecast, o.Oppo_Note, o.Oppo_Certainty \
     FROM dbo.Company c LEFT JOIN dbo.Opportunity o ON o.Oppo_PrimaryCompanyId = c.Comp_CompanyId \
     ORDER BY c.Comp_CompanyId";

/// Column index of the native datetime (compared through `upd` for tsql).
const NATIVE_DATETIME: usize = 5;

fn canonical_number(s: &str) -> String {
    if s.contains('.') {
        let t = s.trim_end_matches('0').trim_end_matches('.');
        if t.is_empty() || t == "-" {
            "0".into()
        } else {
            t.to_string()
        }
    } else {
        s.to_string()
    }
}

async fn seed(c: &mut Tds) {
    load_crm_schema(c).await;
    let at = chrono::NaiveDate::from_ymd_opt(2024, 3, 31)
        .unwrap()
        .and_hms_milli_opt(23, 59, 58, 997)
        .unwrap();
    let names: [Option<&str>; 4] = [
        Some("Acme Ltd"),
        Some("Zoë & Søn 😀"),
        None,
        Some("Ünïcode, comma"),
    ];
    for (i, name) in names.iter().enumerate() {
        let promote = if i % 2 == 0 { Some("Y") } else { None };
        let deleted: Option<u8> = if i == 3 { Some(1) } else { None };
        c.execute(
            "INSERT INTO dbo.Company (Comp_Name, comp_promote, Comp_Deleted, Comp_SecTerr, Comp_UpdatedDate) \
             VALUES (@P1, @P2, @P3, @P4, @P5)",
            &[name, &promote, &deleted, &-2147483640i32, &at],
        )
        .await
        .unwrap();
    }
    let forecast = rust_decimal::Decimal::new(123_456_789_012_345, 6);
    let note = "n".repeat(4500);
    c.execute(
        "INSERT INTO dbo.Opportunity (Oppo_PrimaryCompanyId, Oppo_Forecast, Oppo_Note, Oppo_Certainty) VALUES (2, @P1, @P2, 75)",
        &[&forecast, &note.as_str()],
    )
    .await
    .unwrap();
}

fn tiberius_rows(rows: &[tiberius::Row]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    let v = if let Ok(Some(x)) = r.try_get::<i32, _>(i) {
                        Some(x.to_string())
                    } else if let Ok(Some(x)) = r.try_get::<u8, _>(i) {
                        Some(x.to_string())
                    } else if let Ok(Some(x)) = r.try_get::<&str, _>(i) {
                        Some(x.to_string())
                    } else if let Ok(Some(x)) = r.try_get::<rust_decimal::Decimal, _>(i) {
                        Some(canonical_number(&x.to_string()))
                    } else if let Ok(Some(x)) = r.try_get::<chrono::NaiveDateTime, _>(i) {
                        // Round the 1/300 s value to milliseconds, as SQL Server displays it.
                        let ms =
                            (x.and_utc().timestamp_subsec_nanos() as i64 + 500_000) / 1_000_000;
                        let t = x.with_nanosecond(0).unwrap() + chrono::Duration::milliseconds(ms);
                        Some(t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
                    } else {
                        None
                    };
                    v.unwrap_or_else(|| "NULL".into())
                })
                .collect()
        })
        .collect()
}

use chrono::Timelike;

const PYTHON: &str = r#"
import sys, decimal, datetime
import pytds
port, password, query = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with pytds.connect(server='127.0.0.1', port=port, database='CRM', user='sa', password=password, autocommit=True) as conn:
    cur = conn.cursor()
    cur.execute(query)
    for row in cur.fetchall():
        out = []
        for v in row:
            if v is None:
                out.append('NULL')
            elif isinstance(v, datetime.datetime):
                out.append(v.strftime('%Y-%m-%d %H:%M:%S.') + '%03d' % round(v.microsecond / 1000))
            elif isinstance(v, decimal.Decimal):
                out.append(format(v, 'f'))
            elif isinstance(v, bool):
                out.append(str(int(v)))
            else:
                out.append(str(v))
        print('\t'.join(out))
"#;

fn python_has_pytds() -> bool {
    Command::new("python3")
        .args(["-c", "import pytds"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn tsql_installed() -> bool {
    Command::new("tsql")
        .arg("-C")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn parse_tsv(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split('\t')
                .map(|v| {
                    let looks_numeric = !v.is_empty()
                        && v.chars()
                            .all(|c| c.is_ascii_digit() || c == '.' || c == '-');
                    if looks_numeric {
                        canonical_number(v)
                    } else {
                        v.to_string()
                    }
                })
                .collect()
        })
        .collect()
}

// External clients block their thread: the server needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiberius_tsql_and_python_tds_read_the_same_data() {
    let s = standin().await;
    let mut c = connect(&s).await;
    seed(&mut c).await;
    let expected = tiberius_rows(&rows(&mut c, QUERY).await);
    assert_eq!(expected.len(), 4);
    assert_eq!(expected[1][1], "Zoë & Søn 😀");
    assert_eq!(expected[1][6], "2024-03-31 23:59:58.997");
    assert_eq!(expected[1][7], "123456789.012345");
    let mut checked = 0;

    if python_has_pytds() {
        let out = Command::new("python3")
            .env("PYTHONIOENCODING", "utf-8")
            .args(["-c", PYTHON, &s.port().to_string(), PASSWORD, QUERY])
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python-tds failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = parse_tsv(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(got, expected, "python-tds disagrees with tiberius");
        checked += 1;
    } else {
        println!("SKIPPED python-tds cross-check: python3 module pytds not installed (pip install python-tds)");
    }

    if tsql_installed() {
        let dir = std::env::temp_dir().join(format!(
            "standin-freetds-{}-{}",
            std::process::id(),
            s.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("freetds.conf");
        std::fs::write(&conf, format!("[standin]\n\thost = 127.0.0.1\n\tport = {}\n\ttds version = 7.4\n\tclient charset = UTF-8\n", s.port())).unwrap();
        let mut child = Command::new("tsql")
            .args([
                "-S", "standin", "-U", USER, "-P", PASSWORD, "-D", "CRM", "-o", "q",
            ])
            .env("FREETDSCONF", &conf)
            // The comparison is of UTF-8 text, whatever the machine's locale.
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tsql");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{QUERY}\ngo\nexit\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut got = parse_tsv(&text);
        assert!(
            !got.is_empty(),
            "tsql printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header = got.remove(0);
        assert_eq!(header[0], "Comp_CompanyId", "tsql header: {header:?}");
        // tsql prints datetime to the minute; the same value is compared as text in `upd`.
        let strip = |rows: &[Vec<String>]| -> Vec<Vec<String>> {
            rows.iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .filter(|(i, _)| *i != NATIVE_DATETIME)
                        .map(|(_, v)| v.clone())
                        .collect()
                })
                .collect()
        };
        assert_eq!(
            strip(&got),
            strip(&expected),
            "tsql disagrees with tiberius:\n{text}"
        );
        checked += 1;
    } else {
        println!(
            "SKIPPED tsql cross-check: FreeTDS tsql not installed (apt-get install freetds-bin)"
        );
    }
    println!("cross-checked with {checked} of 2 independent clients");
}

const PYTHON_CANCEL: &str = r#"
import sys
import pytds
port, password = int(sys.argv[1]), sys.argv[2]
with pytds.connect(server='127.0.0.1', port=port, database='CRM', user='sa', password=password, autocommit=True, timeout=1) as conn:
    cur = conn.cursor()
    try:
        cur.execute("WAITFOR DELAY '00:02:00'; INSERT INTO t VALUES (1)")
        print('finished')
    except pytds.TimeoutError:
        print('timeout')
    cur = conn.cursor()
    cur.execute("SELECT 42")
    print(cur.fetchone()[0])
"#;

/// python-tds sends ATTENTION when its query timeout expires; SQL Server
/// stops the batch and answers with a DONE carrying the ATTN bit, and the
/// connection stays usable ("MS-TDS 2.2.1.7 Attention").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attention_cancels_a_running_batch() {
    if !python_has_pytds() {
        println!(
            "SKIPPED attention check: python3 module pytds not installed (pip install python-tds)"
        );
        return;
    }
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(&mut c, "CREATE TABLE t (a int)").await;
    let out = Command::new("python3")
        .args(["-c", PYTHON_CANCEL, &s.port().to_string(), PASSWORD])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-tds failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["timeout", "42"]);
    // The batch stopped at the WAITFOR: its INSERT never ran.
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM t").await,
        Some(0)
    );
}

const PYTHON_POOL: &str = r#"
import sys
import pytds
port, password = int(sys.argv[1]), sys.argv[2]
def connect():
    return pytds.connect(server='127.0.0.1', port=port, database='CRM', user='sa', password=password,
                         autocommit=False, pooling=True)
conn = connect()
cur = conn.cursor()
cur.execute("CREATE TABLE #left_behind (a int)")
cur.execute("SET XACT_ABORT ON")
conn.close()
conn = connect()
cur = conn.cursor()
cur.execute("SELECT CASE WHEN OBJECT_ID('tempdb..#left_behind') IS NULL THEN 'clean' ELSE 'dirty' END")
print(cur.fetchone()[0])
# Without autocommit python-tds drives transactions with Transaction
# Manager requests (TM_BEGIN_XACT, TM_COMMIT_XACT, TM_ROLLBACK_XACT).
cur.execute("CREATE TABLE tm (a int)")
conn.commit()
cur.execute("INSERT INTO tm VALUES (1)")
conn.rollback()
cur.execute("INSERT INTO tm VALUES (2)")
conn.commit()
cur.execute("SELECT a FROM tm")
print([r[0] for r in cur.fetchall()])
conn.close()
"#;

/// A pooled python-tds connection is reset with sp_reset_connection before
/// reuse: temporary tables and SET options of the previous user are gone;
/// and transactions driven by Transaction Manager requests (MS-TDS 2.2.6.9)
/// commit and roll back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_reset_and_transaction_manager_requests() {
    if !python_has_pytds() {
        println!(
            "SKIPPED pool reset check: python3 module pytds not installed (pip install python-tds)"
        );
        return;
    }
    let s = standin().await;
    let out = Command::new("python3")
        .args(["-c", PYTHON_POOL, &s.port().to_string(), PASSWORD])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python-tds failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["clean", "[2]"]);
}

const PYTHON_ERRORS: &str = r#"
import sys
import pytds
port, password = int(sys.argv[1]), sys.argv[2]
with pytds.connect(server='127.0.0.1', port=port, database='CRM', user='sa', password=password, autocommit=True) as conn:
    cur = conn.cursor()
    for sql in sys.argv[3:]:
        try:
            cur.execute(sql)
            print('ok')
        except pytds.Error as e:
            print(e.msg_no, e.severity)
"#;

/// The same error numbers and severities reach a client that shares no code
/// with tiberius ("Database engine events and errors").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tds_sees_sql_server_error_numbers() {
    if !python_has_pytds() {
        println!("SKIPPED python-tds error check: python3 module pytds not installed (pip install python-tds)");
        return;
    }
    let s = standin().await;
    let port = s.port().to_string();
    let out = Command::new("python3")
        .args(["-c", PYTHON_ERRORS, &port, PASSWORD])
        .args([
            "CREATE TABLE e (id int NOT NULL PRIMARY KEY, v nvarchar(2) NULL)",
            "INSERT INTO e VALUES (1, N'a')",
            "INSERT INTO e VALUES (1, N'b')",
            "INSERT INTO e VALUES (2, N'abc')",
            "INSERT INTO e (v) VALUES (N'x')",
            "SELECT nope FROM e",
            "SELECT * FROM nope",
        ])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python-tds failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["ok", "ok", "2627 14", "2628 16", "515 16", "207 16", "208 16"]
    );
}

/// FreeTDS (GnuTLS) negotiates TLS inside PRELOGIN with the stand-in, as it
/// does with SQL Server (`encryption = require`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsql_connects_over_tls() {
    if !tsql_installed() {
        println!(
            "SKIPPED tsql TLS check: FreeTDS tsql not installed (apt-get install freetds-bin)"
        );
        return;
    }
    let s = standin_with(true, "UTC").await;
    let dir = std::env::temp_dir().join(format!(
        "standin-freetds-tls-{}-{}",
        std::process::id(),
        s.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("freetds.conf");
    std::fs::write(
        &conf,
        format!("[standin]\n\thost = 127.0.0.1\n\tport = {}\n\ttds version = 7.4\n\tencryption = require\n", s.port()),
    )
    .unwrap();
    let mut child = Command::new("tsql")
        .args(["-S", "standin", "-U", USER, "-P", PASSWORD, "-o", "q"])
        .env("FREETDSCONF", &conf)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tsql");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT N'over tls' AS t\ngo\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>(),
        ["t", "over tls"],
        "tsql stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
