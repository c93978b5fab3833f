//! TDS protocol conformance as tiberius sees it: login, batches, RPC with
//! typed parameters, result types, DONE row counts, errors, transactions.

use crate::support::*;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use tiberius::ColumnType;

#[tokio::test]
async fn login_and_simple_select() {
    let s = standin().await;
    let mut c = connect(&s).await;
    let row = c
        .simple_query("SELECT 1 AS one, N'x' AS txt")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<i32, _>("one"), Some(1));
    assert_eq!(row.get::<&str, _>("txt"), Some("x"));
}

/// SQL Server answers a failed SQL login with error 18456, severity 14,
/// "Login failed for user '…'." ("MSSQLSERVER_18456").
#[tokio::test]
async fn wrong_password_is_error_18456() {
    let s = standin().await;
    match connect_with(s.port(), "wrong").await {
        Err(tiberius::error::Error::Server(e)) => {
            assert_eq!(e.code(), 18456);
            assert_eq!(e.class(), 14);
        }
        Err(other) => panic!("expected login error, got {other}"),
        Ok(_) => panic!("login with a wrong password succeeded"),
    }
}

#[tokio::test]
async fn create_insert_select_with_parameters() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.T (Id int IDENTITY(1,1) NOT NULL PRIMARY KEY, Name nvarchar(60) NULL, \
         Amount numeric(24,6) NULL, Seen datetime NULL, Flag bit NULL, Tiny tinyint NULL, \
         Big bigint NULL, Small smallint NULL, D date NULL, D2 datetime2(7) NULL, M money NULL, \
         U uniqueidentifier NULL, Note nvarchar(max) NULL, C nchar(1) NULL, V varchar(20) NULL)",
    )
    .await;
    let dt = NaiveDate::from_ymd_opt(2024, 5, 6)
        .unwrap()
        .and_hms_milli_opt(7, 8, 9, 123)
        .unwrap();
    let u = uuid::Uuid::new_v4();
    let long: String = "é".repeat(5000);
    let amount = Decimal::new(-1234567891, 6);
    let money = Decimal::new(123456, 4);
    let r = c
        .execute(
            "INSERT INTO dbo.T (Name, Amount, Seen, Flag, Tiny, Big, Small, D, D2, M, U, Note, C, V) \
             VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14)",
            &[
                &"Zoë 😀",
                &amount,
                &dt,
                &true,
                &200u8,
                &9_000_000_000i64,
                &-3i16,
                &dt.date(),
                &dt,
                &money,
                &u,
                &long.as_str(),
                &"Y",
                &"abc",
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), &[1]);
    // A row of typed NULLs, one per type.
    c.execute(
        "INSERT INTO dbo.T (Name, Amount, Seen, Flag, Tiny, Big, Small, D, D2, M, U, Note, C, V) \
         VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14)",
        &[
            &Option::<&str>::None,
            &Option::<Decimal>::None,
            &Option::<chrono::NaiveDateTime>::None,
            &Option::<bool>::None,
            &Option::<u8>::None,
            &Option::<i64>::None,
            &Option::<i16>::None,
            &Option::<NaiveDate>::None,
            &Option::<chrono::NaiveDateTime>::None,
            &Option::<Decimal>::None,
            &Option::<uuid::Uuid>::None,
            &Option::<&str>::None,
            &Option::<&str>::None,
            &Option::<&str>::None,
        ],
    )
    .await
    .unwrap();

    let stream = c
        .query("SELECT * FROM dbo.T WHERE Id = @P1", &[&1i32])
        .await
        .unwrap();
    let row = stream.into_row().await.unwrap().unwrap();
    let types: Vec<(String, ColumnType)> = row
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.column_type()))
        .collect();
    assert_eq!(types[0], ("Id".to_string(), ColumnType::Int4));
    assert_eq!(types[1].1, ColumnType::NVarchar);
    assert_eq!(types[2].1, ColumnType::Decimaln);
    assert_eq!(types[3].1, ColumnType::Datetimen);
    assert_eq!(types[4].1, ColumnType::Bitn);
    assert_eq!(row.get::<&str, _>("Name"), Some("Zoë 😀"));
    assert_eq!(
        row.get::<Decimal, _>("Amount"),
        Some(Decimal::new(-1234567891, 6))
    );
    // datetime keeps 1/300 s: .123 becomes .123333...
    let seen: chrono::NaiveDateTime = row.get("Seen").unwrap();
    assert_eq!(seen.format("%H:%M:%S%.3f").to_string(), "07:08:09.123");
    assert_eq!(row.get::<bool, _>("Flag"), Some(true));
    assert_eq!(row.get::<u8, _>("Tiny"), Some(200));
    assert_eq!(row.get::<i64, _>("Big"), Some(9_000_000_000));
    assert_eq!(row.get::<i16, _>("Small"), Some(-3));
    assert_eq!(row.get::<NaiveDate, _>("D"), Some(dt.date()));
    assert_eq!(row.get::<chrono::NaiveDateTime, _>("D2"), Some(dt));
    assert_eq!(row.get::<f64, _>("M"), Some(12.3456));
    assert_eq!(row.get::<uuid::Uuid, _>("U"), Some(u));
    assert_eq!(
        row.get::<&str, _>("Note").map(|s| s.chars().count()),
        Some(5000)
    );
    assert_eq!(row.get::<&str, _>("C"), Some("Y"));
    assert_eq!(row.get::<&str, _>("V"), Some("abc"));

    let row = c
        .query(
            "SELECT Name, Amount, Seen FROM dbo.T WHERE Id = @P1",
            &[&2i32],
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<&str, _>(0), None);
    assert_eq!(row.get::<Decimal, _>(1), None);
    assert_eq!(row.get::<chrono::NaiveDateTime, _>(2), None);
    let row = c
        .query("SELECT * FROM dbo.T WHERE Id = @P1", &[&2i32])
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<bool, _>("Flag"), None);
    assert_eq!(row.get::<u8, _>("Tiny"), None);
    assert_eq!(row.get::<i64, _>("Big"), None);
    assert_eq!(row.get::<i16, _>("Small"), None);
    assert_eq!(row.get::<NaiveDate, _>("D"), None);
    assert_eq!(row.get::<chrono::NaiveDateTime, _>("D2"), None);
    assert_eq!(row.get::<f64, _>("M"), None);
    assert_eq!(row.get::<uuid::Uuid, _>("U"), None);
    assert_eq!(row.get::<&str, _>("Note"), None);
    assert_eq!(row.get::<&str, _>("C"), None);
    assert_eq!(row.get::<&str, _>("V"), None);
}

#[tokio::test]
async fn done_tokens_carry_row_counts() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(&mut c, "CREATE TABLE t (a int NOT NULL)").await;
    let r = c
        .execute(
            "INSERT INTO t (a) VALUES (@P1), (@P2); UPDATE t SET a = a + 1 WHERE a > @P3; DELETE FROM t",
            &[&1i32, &2i32, &1i32],
        )
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), &[2, 1, 2]);
}

#[tokio::test]
async fn transactions_commit_and_roll_back() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(&mut c, "CREATE TABLE t (a int NOT NULL)").await;
    exec(&mut c, "BEGIN TRAN; INSERT INTO t VALUES (1); ROLLBACK").await;
    exec(&mut c, "BEGIN TRANSACTION").await;
    c.execute("INSERT INTO t VALUES (@P1)", &[&2i32])
        .await
        .unwrap();
    let n = c
        .simple_query("SELECT @@TRANCOUNT")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(n, Some(1));
    exec(&mut c, "COMMIT").await;
    let rows = c
        .simple_query("SELECT a FROM t ORDER BY a")
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let vals: Vec<i32> = rows.iter().filter_map(|r| r.get::<i32, _>(0)).collect();
    assert_eq!(vals, vec![2]);
}

#[tokio::test]
async fn errors_carry_sql_server_numbers() {
    let s = standin().await;
    let mut c = connect(&s).await;
    let e = server_error(&mut c, "SELECT * FROM dbo.NoSuchTable").await;
    assert_eq!((e.code(), e.class()), (208, 16));
    assert_eq!(e.message(), "Invalid object name 'dbo.NoSuchTable'.");
    let e = server_error(&mut c, "CREATE TABLE t (a int); SELECT Nope FROM t").await;
    assert_eq!(
        (e.code(), e.message()),
        (207, "Invalid column name 'Nope'.")
    );
    // The connection stays usable after an error.
    exec(&mut c, "SELECT 1").await;
}

async fn connect_encrypted(port: u16, level: tiberius::EncryptionLevel) -> Tds {
    let config = tiberius_config(port, PASSWORD, level);
    let tcp = tokio::net::TcpStream::connect(config.get_addr())
        .await
        .unwrap();
    tiberius::Client::connect(
        config,
        tokio_util::compat::TokioAsyncWriteCompatExt::compat_write(tcp),
    )
    .await
    .expect("TLS connect")
}

/// TLS inside PRELOGIN: full encryption (ENCRYPT_ON) and login-only
/// encryption (ENCRYPT_OFF), both with a self-signed certificate.
#[tokio::test]
async fn tls_full_and_login_only() {
    let s = standin_with(true, "UTC").await;
    for level in [
        tiberius::EncryptionLevel::Required,
        tiberius::EncryptionLevel::Off,
    ] {
        let mut c = connect_encrypted(s.port(), level).await;
        exec(&mut c, "CREATE TABLE IF_NOT_USED_YET (a int)").await;
        let big = "x".repeat(20_000);
        let row = c
            .query("SELECT @P1 AS v, 7 AS n", &[&big.as_str()])
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<&str, _>("v").map(str::len), Some(20_000));
        assert_eq!(row.get::<i32, _>("n"), Some(7));
        exec(&mut c, "DROP TABLE IF_NOT_USED_YET").await;
    }
    // A client that refuses encryption still gets in when the server offers it.
    let mut c = connect(&s).await;
    assert_eq!(scalar::<i32>(&mut c, "SELECT 1").await, Some(1));
}

/// tiberius 0.13 speaks the same TDS: login, RPC parameters, typed results.
#[tokio::test]
async fn tiberius_0_13_connects_and_binds() {
    let s = standin().await;
    let mut config = tiberius13::Config::new();
    config.host("127.0.0.1");
    config.port(s.port());
    config.authentication(tiberius13::AuthMethod::sql_server(USER, PASSWORD));
    config.encryption(tiberius13::EncryptionLevel::NotSupported);
    let tcp = tokio::net::TcpStream::connect(config.get_addr())
        .await
        .unwrap();
    let mut c = tiberius13::Client::connect(
        config,
        tokio_util::compat::TokioAsyncWriteCompatExt::compat_write(tcp),
    )
    .await
    .expect("tiberius 0.13 connects");
    let at = NaiveDate::from_ymd_opt(2024, 1, 2)
        .unwrap()
        .and_hms_opt(3, 4, 5)
        .unwrap();
    let row = c
        .query(
            "SELECT @P1 + 1 AS n, @P2 AS s, @P3 AS d, COUNT(*) AS c",
            &[&41i32, &"😀", &at],
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<i32, _>("n"), Some(42));
    assert_eq!(row.get::<&str, _>("s"), Some("😀"));
    assert_eq!(row.get::<chrono::NaiveDateTime, _>("d"), Some(at));
    assert_eq!(row.get::<i32, _>("c"), Some(1));
}

/// A database that cannot be opened fails the login with error 4060
/// ("MSSQLSERVER_4060"), not with a dropped connection.
#[tokio::test]
async fn unreachable_database_fails_login_with_4060() {
    let pg_url = testkit::fresh_database("standin_gone").await;
    let s = mssql_standin::start(
        mssql_standin::Config {
            pg_url: pg_url.clone(),
            user: USER.into(),
            password: PASSWORD.into(),
            timezone: "UTC".into(),
            tls: false,
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let db = pg_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let (admin, conn) =
        tokio_postgres::connect(&testkit::server().admin_url, tokio_postgres::NoTls)
            .await
            .unwrap();
    let task = tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .await
        .unwrap();
    drop(admin);
    let _ = task.await;
    match connect_with(s.port(), PASSWORD).await {
        Err(tiberius::error::Error::Server(e)) => assert_eq!(e.code(), 4060),
        Err(other) => panic!("expected error 4060, got {other}"),
        Ok(_) => panic!("login to a dropped database succeeded"),
    }
}
