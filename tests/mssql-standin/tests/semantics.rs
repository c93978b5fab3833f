//! The SQL Server behaviours replicators trip over, each pinned to what real
//! SQL Server does (the comment on each test cites Microsoft's documentation
//! page by its title).

use crate::support::*;
use chrono::{NaiveDate, NaiveDateTime};
use tiberius::ColumnType;

fn ts(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

/// 1. SQL Server: datetime is "rounded to increments of .000, .003, or .007
/// seconds" ("datetime (Transact-SQL)"). Under compatibility level 130 and
/// later a datetime compared with a datetime2 is converted exactly, so
/// .857 stored becomes .8566667 and `col >= @p` with @p = .857 misses the row
/// ("SQL Server 2016 improvements in handling some data types and uncommon
/// operations"; "ALTER DATABASE Compatibility Level").
#[tokio::test]
async fn datetime_rounds_to_300ths_and_compares_at_datetime2_precision() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(&mut c, "CREATE TABLE t (id int NOT NULL, d datetime NULL)").await;
    exec(
        &mut c,
        "INSERT INTO t VALUES (1, '2024-01-01 10:00:00.857'), (2, '2024-01-01 10:00:00.001'), \
         (3, '2024-01-01 10:00:00.002'), (4, '2024-01-01 10:00:00.005'), (5, '2024-01-01 23:59:59.999')",
    )
    .await;
    let shown: Vec<String> = rows(
        &mut c,
        "SELECT CONVERT(varchar(23), d, 121) FROM t ORDER BY id",
    )
    .await
    .iter()
    .map(|r| r.get::<&str, _>(0).unwrap().to_string())
    .collect();
    assert_eq!(
        shown,
        [
            "2024-01-01 10:00:00.857",
            "2024-01-01 10:00:00.000",
            "2024-01-01 10:00:00.003",
            "2024-01-01 10:00:00.007",
            "2024-01-02 00:00:00.000"
        ]
    );
    // The stored value is 257/300 s: tiberius decodes .856666...
    let d: NaiveDateTime = scalar(&mut c, "SELECT d FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(d.format("%H:%M:%S%.6f").to_string(), "10:00:00.856666");
    // tiberius binds chrono values as datetime2(7): the row is missed ...
    let p = ts("2024-01-01 10:00:00.857");
    let n = c
        .query("SELECT COUNT(*) FROM t WHERE id = 1 AND d >= @P1", &[&p])
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(
        n,
        Some(0),
        "datetime .857 compared with datetime2 .857 must not match"
    );
    // ... unless the parameter is cast to the column's type.
    let n = c
        .query(
            "SELECT COUNT(*) FROM t WHERE id = 1 AND d >= CAST(@P1 AS datetime)",
            &[&p],
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(n, Some(1));
    // Read back through tiberius (.856666666) and bound again as datetime2(7)
    // (.8566666), the value is still below the column's exact .8566667: a
    // `>` watermark query re-reads the row forever, as on SQL Server.
    let n = c
        .query("SELECT COUNT(*) FROM t WHERE id = 1 AND d > @P1", &[&d])
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(
        n,
        Some(1),
        "datetime .8566667 > datetime2 .8566666 on SQL Server"
    );
    let n = c
        .query(
            "SELECT COUNT(*) FROM t WHERE id = 1 AND d > CAST(@P1 AS datetime)",
            &[&d],
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(n, Some(0));
    // A string compared with a datetime column is converted to datetime first.
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT COUNT(*) FROM t WHERE d = '2024-01-01 10:00:00.857'"
        )
        .await,
        Some(1)
    );
    let n = c
        .query(
            "SELECT COUNT(*) FROM t WHERE d = @P1",
            &[&"2024-01-01 10:00:00.857"],
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(n, Some(1));
    // Parameters stored into datetime are rounded too.
    c.execute(
        "INSERT INTO t VALUES (6, @P1)",
        &[&ts("2024-01-01 10:00:00.0049")],
    )
    .await
    .unwrap();
    let shown: Option<String> = text(
        &mut c,
        "SELECT CONVERT(varchar(23), d, 121) FROM t WHERE id = 6",
    )
    .await;
    assert_eq!(shown.as_deref(), Some("2024-01-01 10:00:00.003"));
}

/// 1 (continued). A datetimeoffset value (tiberius binds
/// `DateTime<FixedOffset>` so; `DateTime<Utc>` goes as datetime2 in UTC)
/// outranks datetime and datetime2: the column is converted to
/// datetimeoffset at +00:00, whatever the server's time zone, so
/// `col = @utc` compares the column's clock time with the UTC clock time
/// ("Data type precedence (Transact-SQL)", "datetimeoffset (Transact-SQL)":
/// converting datetime to datetimeoffset).
#[tokio::test]
async fn datetime_columns_meet_datetimeoffset_parameters_at_utc() {
    // British Summer Time is UTC+1 on this date: a zone-based conversion
    // would be an hour off.
    let s = standin_with(false, "Europe/London").await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE t (d datetime NULL, d2 datetime2(3) NULL); \
         INSERT INTO t VALUES ('2024-07-01 12:00:00', '2024-07-01 12:00:00')",
    )
    .await;
    // 14:00 at +02:00 is 12:00 UTC.
    let noon_utc = chrono::DateTime::parse_from_rfc3339("2024-07-01T14:00:00+02:00").unwrap();
    for (col, at, expected) in [
        ("d", noon_utc, 1),
        ("d2", noon_utc, 1),
        ("d", noon_utc - chrono::Duration::hours(1), 0),
        ("d2", noon_utc - chrono::Duration::hours(1), 0),
    ] {
        let n = c
            .query(format!("SELECT COUNT(*) FROM t WHERE {col} = @P1"), &[&at])
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap()
            .get::<i32, _>(0);
        assert_eq!(n, Some(expected), "{col} = {at}");
    }
}

/// 1 (continued). A date or time without offset converted to
/// datetimeoffset keeps its clock time at offset +00:00, whatever the
/// server's time zone ("datetimeoffset (Transact-SQL)", converting
/// datetime2 and the other date and time types to datetimeoffset): a
/// `DateTime<Utc>` parameter, which tiberius sends as datetime2, cast to
/// a datetimeoffset column's type is that UTC instant.
#[tokio::test]
async fn a_value_without_offset_converts_to_datetimeoffset_at_utc() {
    let s = standin_with(false, "America/New_York").await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE t (id int NOT NULL, at datetimeoffset(3) NOT NULL); \
         INSERT INTO t VALUES (1, '2024-07-01 08:00:00 -04:00'), (2, '2024-07-01 09:00:00 -04:00')",
    )
    .await;
    let noon = chrono::NaiveDate::from_ymd_opt(2024, 7, 1)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap();
    let utc = noon.and_utc();
    for sql in [
        "SELECT CAST(@P1 AS datetimeoffset(3))",
        "SELECT CONVERT(datetimeoffset(3), @P1)",
        "SELECT CAST(CAST('2024-07-01 12:00:00' AS datetime2) AS datetimeoffset)",
    ] {
        let got: Option<chrono::DateTime<chrono::FixedOffset>> = c
            .query(sql, &[&noon])
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .unwrap()
            .get(0);
        // The instant; the stand-in shows every datetimeoffset at the
        // server's offset, where SQL Server would show +00:00 here.
        assert_eq!(got.map(|d| d.to_utc()), Some(utc), "{sql}");
    }
    // 08:00 at -04:00 is 12:00 UTC.
    let ids: Vec<i32> = c
        .query(
            "SELECT id FROM t WHERE at >= CAST(@P1 AS datetimeoffset(3)) ORDER BY id",
            &[&utc],
        )
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0).unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
}

/// 2. SQL Server: nvarchar(n) holds n byte-pairs (UTF-16 code units), so a
/// character outside the BMP takes two ("nchar and nvarchar (Transact-SQL)");
/// a longer value raises error 2628, level 16, and the statement is
/// aborted ("MSSQLSERVER_2628").
#[tokio::test]
async fn nvarchar_length_counts_utf16_units_and_overflow_is_2628() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE t (id int NOT NULL, v nvarchar(3) NULL)",
    )
    .await;
    c.execute("INSERT INTO t VALUES (1, @P1)", &[&"😀a"])
        .await
        .unwrap();
    let e = match c
        .execute("INSERT INTO t VALUES (2, @P1), (3, N'ok')", &[&"😀ab"])
        .await
    {
        Err(tiberius::error::Error::Server(e)) => e,
        other => panic!("expected 2628, got {other:?}"),
    };
    assert_eq!((e.code(), e.class()), (2628, 16));
    assert!(e.message().contains("column 'v'"), "{}", e.message());
    // The whole statement was aborted, nothing of it stored.
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM t").await,
        Some(1)
    );
    assert_eq!(scalar::<i32>(&mut c, "SELECT LEN(v) FROM t").await, Some(3));
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT DATALENGTH(v) FROM t").await,
        Some(6)
    );
}

/// 3. SQL Server with SQL_Latin1_General_CP1_CI_AS compares case-insensitively
/// and accent-sensitively ("Collation and Unicode support"), and `=` ignores
/// trailing spaces ("How SQL Server compares strings with trailing spaces").
#[tokio::test]
async fn ci_as_collation_compares_and_orders_like_sql_server() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(&mut c, "CREATE TABLE t (v nvarchar(20) NULL)").await;
    exec(
        &mut c,
        "INSERT INTO t VALUES (N'b'), (N'A'), (N'c'), (N'é'), (N'e')",
    )
    .await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM t WHERE v = N'a'").await,
        Some(1)
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM t WHERE v = N'E'").await,
        Some(1)
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM t WHERE v = N'b   '").await,
        Some(1)
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM t WHERE v LIKE N'B%'").await,
        Some(1)
    );
    let n = c
        .query("SELECT COUNT(*) FROM t WHERE v = @P1", &[&"C"])
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(n, Some(1));
    // A parameter cast to a character type is a string too: a padded
    // char(n) equals it.
    exec(
        &mut c,
        "CREATE TABLE p (k char(6) NULL); INSERT INTO p VALUES ('K1')",
    )
    .await;
    let n = c
        .query(
            "SELECT COUNT(*) FROM p WHERE k = CAST(@P1 AS varchar(8000))",
            &[&"k1"],
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(n, Some(1));
    let order: Vec<String> = rows(&mut c, "SELECT v FROM t ORDER BY v")
        .await
        .iter()
        .map(|r| r.get::<&str, _>(0).unwrap().to_string())
        .collect();
    assert_eq!(order, ["A", "b", "c", "e", "é"]);
    // Column to column, too: 'b' joins 'B  '.
    exec(
        &mut c,
        "CREATE TABLE w (k nvarchar(10) NULL); INSERT INTO w VALUES (N'B  ')",
    )
    .await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM t JOIN w ON w.k = t.v").await,
        Some(1)
    );
    // A unique index sees 'X' and 'x' as the same key.
    exec(
        &mut c,
        "CREATE TABLE u (k nvarchar(10) NULL); CREATE UNIQUE INDEX IX_k ON u (k)",
    )
    .await;
    exec(&mut c, "INSERT INTO u VALUES (N'X')").await;
    let e = server_error(&mut c, "INSERT INTO u VALUES (N'x')").await;
    assert_eq!(e.code(), 2601);
}

/// 4. SQL Server: OUTPUT INSERTED returns the generated key ("OUTPUT Clause
/// (Transact-SQL)"); SCOPE_IDENTITY() returns numeric(38,0) ("SCOPE_IDENTITY
/// (Transact-SQL)"); COLUMNPROPERTY(..., 'IsIdentity') tells identity columns
/// ("COLUMNPROPERTY (Transact-SQL)"); explicit values need SET IDENTITY_INSERT
/// ON, else error 544 ("SET IDENTITY_INSERT (Transact-SQL)").
#[tokio::test]
async fn identity_output_scope_identity_columnproperty_identity_insert() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.T (Id int IDENTITY(10,5) NOT NULL PRIMARY KEY, Name nvarchar(20) NULL)",
    )
    .await;
    let id: Option<i32> = scalar(
        &mut c,
        "INSERT INTO dbo.T (Name) OUTPUT INSERTED.Id VALUES (N'a')",
    )
    .await;
    assert_eq!(id, Some(10));
    let row = c
        .simple_query("INSERT INTO dbo.T (Name) VALUES (N'b'); SELECT SCOPE_IDENTITY() AS id")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    let col = &row.columns()[0];
    assert!(matches!(
        col.column_type(),
        ColumnType::Decimaln | ColumnType::Numericn
    ));
    assert_eq!(row.get::<rust_decimal::Decimal, _>(0), Some(15.into()));
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT COLUMNPROPERTY(OBJECT_ID('dbo.T'), 'Id', 'IsIdentity')"
        )
        .await,
        Some(1)
    );
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT COLUMNPROPERTY(OBJECT_ID('T'), 'Name', 'IsIdentity')"
        )
        .await,
        Some(0)
    );
    let e = server_error(&mut c, "INSERT INTO dbo.T (Id, Name) VALUES (100, N'x')").await;
    assert_eq!(e.code(), 544);
    exec(
        &mut c,
        "SET IDENTITY_INSERT dbo.T ON; INSERT INTO dbo.T (Id, Name) VALUES (100, N'x'); SET IDENTITY_INSERT dbo.T OFF",
    )
    .await;
    let id: Option<i32> = scalar(
        &mut c,
        "INSERT INTO dbo.T (Name) OUTPUT INSERTED.Id VALUES (N'c')",
    )
    .await;
    assert_eq!(id, Some(105), "identity continues after the explicit value");
    // An explicit value below the current identity does not move it back.
    exec(
        &mut c,
        "SET IDENTITY_INSERT dbo.T ON; INSERT INTO dbo.T (Id, Name) VALUES (7, N'low'); SET IDENTITY_INSERT dbo.T OFF",
    )
    .await;
    let id: Option<i32> = scalar(
        &mut c,
        "INSERT INTO dbo.T (Name) OUTPUT INSERTED.Id VALUES (N'd')",
    )
    .await;
    assert_eq!(id, Some(110));
    // IDENT_CURRENT: the last value generated for the table ("IDENT_CURRENT
    // (Transact-SQL)").
    let cur: Option<rust_decimal::Decimal> = scalar(&mut c, "SELECT IDENT_CURRENT('dbo.T')").await;
    assert_eq!(cur, Some(110.into()));
}

/// 5. Sage CRM allocates ids with `EXEC @id = eware_get_identity_id 'Table'`
/// over SQL_Identity (Id_TableId, Id_NextId); the value comes back as the
/// procedure's return status ("RETURN (Transact-SQL)", "EXECUTE
/// (Transact-SQL)": `@return_status`).
#[tokio::test]
async fn eware_get_identity_id_allocates_from_sql_identity() {
    let s = standin().await;
    let mut c = connect(&s).await;
    load_crm_schema(&mut c).await;
    let sql = "DECLARE @id int; EXEC @id = eware_get_identity_id 'Company'; SELECT @id";
    assert_eq!(scalar::<i32>(&mut c, sql).await, Some(1));
    assert_eq!(scalar::<i32>(&mut c, sql).await, Some(2));
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT Id_NextId FROM SQL_Identity WHERE Id_TableId = 5"
        )
        .await,
        Some(3)
    );
    let e = server_error(
        &mut c,
        "DECLARE @id int; EXEC @id = eware_get_identity_id 'NoSuchTable'",
    )
    .await;
    assert_eq!(e.code(), 50000);
}

/// 6. SQL Server: sp_getapplock returns 0 when granted synchronously and -1
/// when @LockTimeout expires; a Transaction-owned lock needs a transaction
/// (else -999 and informational Msg 15626) and is released at its end;
/// sp_releaseapplock returns 0, or -999 with Msg 1223 for a lock not held
/// ("sp_getapplock (Transact-SQL)", "sp_releaseapplock (Transact-SQL)",
/// "Database engine events and errors").
#[tokio::test]
async fn applocks_grant_time_out_and_release() {
    let s = standin().await;
    let mut a = connect(&s).await;
    let mut b = connect(&s).await;
    let get = "DECLARE @r int; EXEC @r = sp_getapplock @Resource = 'crmsync:supplier', @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 0; SELECT @r";
    assert_eq!(scalar::<i32>(&mut a, get).await, Some(0));
    assert_eq!(scalar::<i32>(&mut b, get).await, Some(-1));
    let rel = "DECLARE @r int; EXEC @r = sp_releaseapplock @Resource = 'crmsync:supplier', @LockOwner = 'Session'; SELECT @r";
    assert_eq!(scalar::<i32>(&mut a, rel).await, Some(0));
    assert_eq!(scalar::<i32>(&mut b, get).await, Some(0));
    assert_eq!(scalar::<i32>(&mut b, rel).await, Some(0));
    // Transaction-owned outside a transaction: -999 with informational Msg 15626.
    let tget0 = "DECLARE @r int; EXEC @r = sp_getapplock @Resource = 'r2', @LockMode = 'Exclusive', @LockTimeout = 0; SELECT @r";
    assert_eq!(scalar::<i32>(&mut a, tget0).await, Some(-999));
    // Releasing a lock not held: -999 with error 1223.
    let e = server_error(
        &mut a,
        "EXEC sp_releaseapplock @Resource = 'never', @LockOwner = 'Session'",
    )
    .await;
    assert_eq!((e.code(), e.class()), (1223, 16));
    // Transaction-owned: held until COMMIT.
    let tget = "DECLARE @r int; EXEC @r = sp_getapplock @Resource = 'r2', @LockMode = 'Exclusive', @LockTimeout = 0; SELECT @r";
    exec(&mut a, "BEGIN TRAN").await;
    assert_eq!(scalar::<i32>(&mut a, tget).await, Some(0));
    exec(&mut b, "BEGIN TRAN").await;
    assert_eq!(scalar::<i32>(&mut b, tget).await, Some(-1));
    exec(&mut a, "COMMIT").await;
    assert_eq!(scalar::<i32>(&mut b, tget).await, Some(0));
    exec(&mut b, "ROLLBACK").await;
    // SET LOCK_TIMEOUT 0: a blocked statement fails with 1222 at once
    // ("SET LOCK_TIMEOUT (Transact-SQL)"), and sp_getapplock's default
    // @LockTimeout is @@LOCK_TIMEOUT.
    exec(
        &mut a,
        "CREATE TABLE lk (id int NOT NULL PRIMARY KEY, v int NULL); INSERT INTO lk VALUES (1, 0)",
    )
    .await;
    exec(&mut a, "BEGIN TRAN; UPDATE lk SET v = 1 WHERE id = 1").await;
    exec(&mut b, "SET LOCK_TIMEOUT 0").await;
    assert_eq!(
        scalar::<i32>(&mut b, "SELECT @@LOCK_TIMEOUT").await,
        Some(0)
    );
    let e = server_error(&mut b, "UPDATE lk SET v = 2 WHERE id = 1").await;
    assert_eq!((e.code(), e.class()), (1222, 16));
    let held = "DECLARE @r int; EXEC @r = sp_getapplock @Resource = 'r3', @LockMode = 'Exclusive', @LockOwner = 'Session'; SELECT @r";
    assert_eq!(scalar::<i32>(&mut a, held).await, Some(0));
    assert_eq!(scalar::<i32>(&mut b, held).await, Some(-1));
    exec(&mut a, "COMMIT").await;
}

/// 7. SQL Server's error numbers and severities ("Database engine events and
/// errors"), and statement- versus transaction-level rollback: without
/// XACT_ABORT only the failing statement is rolled back; with SET XACT_ABORT
/// ON the whole transaction is ("SET XACT_ABORT (Transact-SQL)").
#[tokio::test]
async fn error_numbers_and_xact_abort() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE p (id int NOT NULL PRIMARY KEY, name nvarchar(10) NOT NULL, code nvarchar(10) NULL); \
         CREATE UNIQUE INDEX IX_p_code ON p (code); \
         CREATE TABLE ch (id int NOT NULL, pid int NULL REFERENCES p (id))",
    )
    .await;
    exec(&mut c, "INSERT INTO p VALUES (1, N'a', N'x')").await;
    let cases: &[(&str, u32, u8)] = &[
        ("INSERT INTO p VALUES (1, N'b', NULL)", 2627, 14),
        ("INSERT INTO p VALUES (2, N'b', N'X')", 2601, 14),
        ("INSERT INTO ch VALUES (1, 99)", 547, 16),
        ("INSERT INTO p (id, name) VALUES (3, NULL)", 515, 16),
        ("SELECT nope FROM p", 207, 16),
        ("SELECT * FROM nope", 208, 16),
        ("SELECT CAST('abc' AS int)", 245, 16),
    ];
    for (sql, code, class) in cases {
        let e = server_error(&mut c, sql).await;
        assert_eq!(
            (e.code(), e.class()),
            (*code, *class),
            "{sql}: {}",
            e.message()
        );
    }
    let e = server_error(&mut c, "INSERT INTO p VALUES (2, N'b', N'X')").await;
    assert_eq!(
        e.message(),
        "Cannot insert duplicate key row in object 'dbo.p' with unique index 'IX_p_code'. The duplicate key value is (X)."
    );
    let e = server_error(&mut c, "INSERT INTO p VALUES (1, N'b', NULL)").await;
    assert!(
        e.message()
            .starts_with("Violation of PRIMARY KEY constraint 'PK__p'."),
        "{}",
        e.message()
    );
    let e = match c.query("SELECT @P1 + 1.5", &[&"abc"]).await {
        Err(tiberius::error::Error::Server(e)) => e,
        other => panic!("expected 8114, got {:?}", other.map(|_| ())),
    };
    assert_eq!(e.code(), 8114);
    // Without XACT_ABORT the failed statement alone is undone. (Codes differ:
    // a SQL Server unique index admits one NULL only.)
    run_ignoring_errors(&mut c, "BEGIN TRAN; INSERT INTO p VALUES (10, N'a', N'c10'); INSERT INTO p VALUES (1, N'dup', NULL); INSERT INTO p VALUES (11, N'b', N'c11'); COMMIT").await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM p WHERE id IN (10, 11)").await,
        Some(2)
    );
    assert_eq!(scalar::<i32>(&mut c, "SELECT @@TRANCOUNT").await, Some(0));
    // A failing expression outside DML (SET, IF) also rolls back only itself.
    run_ignoring_errors(&mut c, "BEGIN TRAN; INSERT INTO p VALUES (30, N'a', N'c30'); DECLARE @x int; SET @x = CAST('zz' AS int)").await;
    run_ignoring_errors(&mut c, "IF CAST('zz' AS int) = 1 PRINT 'no'").await;
    exec(&mut c, "INSERT INTO p VALUES (31, N'b', N'c31'); COMMIT").await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM p WHERE id IN (30, 31)").await,
        Some(2)
    );
    // With XACT_ABORT the whole transaction is.
    run_ignoring_errors(&mut c, "SET XACT_ABORT ON; BEGIN TRAN; INSERT INTO p VALUES (20, N'a', N'c20'); INSERT INTO p VALUES (1, N'dup', NULL); INSERT INTO p VALUES (21, N'b', N'c21'); COMMIT").await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM p WHERE id IN (20, 21)").await,
        Some(0)
    );
    assert_eq!(scalar::<i32>(&mut c, "SELECT @@TRANCOUNT").await, Some(0));
}

/// 7 (continued). SQL Server reports a deadlock victim with error 1205,
/// severity 13, and rolls its transaction back ("MSSQLSERVER_1205").
#[tokio::test]
async fn deadlock_victim_is_1205_and_rolled_back() {
    let s = standin().await;
    let mut a = connect(&s).await;
    let mut b = connect(&s).await;
    exec(&mut a, "CREATE TABLE d (id int NOT NULL PRIMARY KEY, v int NULL); INSERT INTO d VALUES (1, 0), (2, 0)").await;
    exec(&mut a, "BEGIN TRAN; UPDATE d SET v = 1 WHERE id = 1").await;
    exec(&mut b, "BEGIN TRAN; UPDATE d SET v = 2 WHERE id = 2").await;
    let ta = tokio::spawn(async move {
        let r = a
            .simple_query("UPDATE d SET v = 1 WHERE id = 2")
            .await
            .map(|_| ());
        (a, r)
    });
    // b now closes the cycle; one of the two is chosen as the victim.
    let rb = b
        .simple_query("UPDATE d SET v = 2 WHERE id = 1")
        .await
        .map(|_| ());
    let (mut a, ra) = ta.await.unwrap();
    let (victim, survivor) = match (ra, rb) {
        (Err(tiberius::error::Error::Server(e)), Ok(())) => ((e, &mut a), &mut b),
        (Ok(()), Err(tiberius::error::Error::Server(e))) => ((e, &mut b), &mut a),
        other => panic!("expected exactly one deadlock victim, got {other:?}"),
    };
    assert_eq!((victim.0.code(), victim.0.class()), (1205, 13));
    assert_eq!(scalar::<i32>(victim.1, "SELECT @@TRANCOUNT").await, Some(0));
    exec(survivor, "COMMIT").await;
}

/// 8. SQL Server: COUNT returns int and COUNT_BIG bigint ("COUNT
/// (Transact-SQL)", "COUNT_BIG (Transact-SQL)"); GETDATE() is the server's
/// local time, SYSUTCDATETIME() UTC ("Date and time data types and
/// functions"); TOP, OFFSET-FETCH ("SELECT - ORDER BY Clause"), ISNULL, CAST
/// and CONVERT, LEN ignores trailing spaces ("LEN (Transact-SQL)"),
/// DATALENGTH counts bytes ("DATALENGTH (Transact-SQL)"), SET NOCOUNT.
#[tokio::test]
async fn builtin_functions_and_paging() {
    // UTC+14 all year: GETDATE() must be 14 hours ahead of SYSUTCDATETIME().
    let s = standin_with(false, "Pacific/Kiritimati").await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE t (id int NOT NULL, v nvarchar(10) NULL)",
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO t VALUES (1, N'a'), (2, NULL), (3, N'c  '), (4, N'd'), (5, N'e')",
    )
    .await;
    let r = c
        .simple_query("SELECT COUNT(*), COUNT_BIG(*), GETDATE(), SYSUTCDATETIME(), SYSDATETIMEOFFSET() FROM t")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    let types: Vec<ColumnType> = r.columns().iter().map(|c| c.column_type()).collect();
    assert_eq!(
        &types[..3],
        &[ColumnType::Int4, ColumnType::Int8, ColumnType::Datetimen]
    );
    assert_eq!(types[3], ColumnType::Datetime2);
    assert_eq!(types[4], ColumnType::DatetimeOffsetn);
    assert_eq!(r.get::<i32, _>(0), Some(5));
    assert_eq!(r.get::<i64, _>(1), Some(5));
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT DATEDIFF(hour, SYSUTCDATETIME(), GETDATE())").await,
        Some(14)
    );
    // SYSDATETIMEOFFSET() carries the server's offset.
    let off: Option<chrono::DateTime<chrono::FixedOffset>> =
        scalar(&mut c, "SELECT SYSDATETIMEOFFSET()").await;
    assert_eq!(off.map(|d| d.offset().local_minus_utc()), Some(14 * 3600));
    let ids: Vec<i32> = rows(&mut c, "SELECT TOP (2) id FROM t ORDER BY id DESC")
        .await
        .iter()
        .map(|r| r.get(0).unwrap())
        .collect();
    assert_eq!(ids, [5, 4]);
    let ids: Vec<i32> = rows(
        &mut c,
        "SELECT id FROM t ORDER BY id OFFSET 1 ROWS FETCH NEXT 2 ROWS ONLY",
    )
    .await
    .iter()
    .map(|r| r.get(0).unwrap())
    .collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(
        text(&mut c, "SELECT ISNULL(v, N'none') FROM t WHERE id = 2").await,
        Some("none".to_string())
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT LEN(v) FROM t WHERE id = 3").await,
        Some(1)
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT DATALENGTH(v) FROM t WHERE id = 3").await,
        Some(6)
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT CAST(N'42' AS int) + CONVERT(int, '1')").await,
        Some(43)
    );
    assert_eq!(
        scalar::<NaiveDate>(&mut c, "SELECT CAST('2024-02-29T10:11:12' AS date)").await,
        NaiveDate::from_ymd_opt(2024, 2, 29)
    );
    // DATEDIFF_BIG counts the same boundaries as DATEDIFF into a bigint,
    // so spans that overflow int are counted ("DATEDIFF_BIG
    // (Transact-SQL)", SQL Server 2016 and later): 60 days are
    // 5,184,000,000 milliseconds.
    assert_eq!(
        scalar::<i64>(
            &mut c,
            "SELECT DATEDIFF_BIG(millisecond, CAST('2020-01-01' AS datetime2), \
                    CAST('2020-03-01T00:00:00.25' AS datetime2))"
        )
        .await,
        Some(5_184_000_250)
    );
    // datetime minus a number counts days.
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT DATEDIFF(day, GETDATE() - 7, GETDATE())").await,
        Some(7)
    );
    // DB_NAME() is the database the client logged in to; it runs at a
    // compatibility level of 130 or later ("ALTER DATABASE Compatibility Level").
    assert_eq!(
        text(&mut c, "SELECT DB_NAME()").await.as_deref(),
        Some("CRM")
    );
    assert_eq!(
        scalar::<u8>(
            &mut c,
            "SELECT compatibility_level FROM sys.databases WHERE name = DB_NAME()"
        )
        .await,
        Some(160)
    );
    assert_eq!(
        text(&mut c, "SELECT SERVERPROPERTY('ProductMajorVersion')")
            .await
            .as_deref(),
        Some("16")
    );
    // SET NOCOUNT ON: no row counts in DONE, but @@ROWCOUNT still counts.
    exec(&mut c, "SET NOCOUNT ON").await;
    let r = c
        .execute("UPDATE t SET v = N'y' WHERE id > @P1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(r.total(), 0);
    exec(&mut c, "SET NOCOUNT OFF").await;
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SET NOCOUNT ON; UPDATE t SET v = N'z' WHERE id > 3; SELECT @@ROWCOUNT"
        )
        .await,
        Some(2)
    );
}

/// 9. crmsync's `check` reads INFORMATION_SCHEMA.TABLES/COLUMNS and the sys
/// views: SQL Server reports nvarchar lengths in characters (-1 for max) in
/// INFORMATION_SCHEMA ("COLUMNS (Transact-SQL)") and in bytes in
/// sys.columns.max_length ("sys.columns (Transact-SQL)"); sys.indexes marks
/// primary keys, unique and filtered indexes ("sys.indexes (Transact-SQL)").
#[tokio::test]
async fn catalog_views_report_sql_server_types() {
    let s = standin().await;
    let mut c = connect(&s).await;
    load_crm_schema(&mut c).await;
    let r = rows(
        &mut c,
        "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, IS_NULLABLE, NUMERIC_PRECISION, NUMERIC_SCALE \
         FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_NAME = 'Company' ORDER BY ORDINAL_POSITION",
    )
    .await;
    let first = &r[0];
    assert_eq!(first.get::<&str, _>("COLUMN_NAME"), Some("Comp_CompanyId"));
    assert_eq!(first.get::<&str, _>("DATA_TYPE"), Some("int"));
    assert_eq!(first.get::<&str, _>("IS_NULLABLE"), Some("NO"));
    assert_eq!(first.get::<u8, _>("NUMERIC_PRECISION"), Some(10));
    let name = r
        .iter()
        .find(|r| r.get::<&str, _>(0) == Some("Comp_Name"))
        .unwrap();
    assert_eq!(name.get::<&str, _>(1), Some("nvarchar"));
    assert_eq!(name.get::<i32, _>(2), Some(60));
    let n: Option<i32> = scalar(
        &mut c,
        "SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'company'",
    )
    .await;
    assert_eq!(n, Some(1));
    let r = rows(
        &mut c,
        "SELECT c.name, c.max_length, c.is_identity, t.name AS type_name FROM sys.columns c \
         JOIN sys.types t ON t.user_type_id = c.user_type_id \
         WHERE c.object_id = OBJECT_ID('dbo.Company') AND c.name IN ('Comp_CompanyId', 'Comp_Name', 'Comp_UpdatedDate', 'Oppo_Note') ORDER BY c.column_id",
    )
    .await;
    let got: Vec<(String, i16, bool, String)> = r
        .iter()
        .map(|r| {
            (
                r.get::<&str, _>(0).unwrap().into(),
                r.get(1).unwrap(),
                r.get(2).unwrap(),
                r.get::<&str, _>(3).unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Comp_CompanyId".to_string(), 4, true, "int".to_string()),
            ("Comp_Name".to_string(), 120, false, "nvarchar".to_string()),
            (
                "Comp_UpdatedDate".to_string(),
                8,
                false,
                "datetime".to_string()
            ),
        ]
    );
    let r = rows(
        &mut c,
        "SELECT i.name, i.is_unique, i.is_primary_key, i.has_filter FROM sys.indexes i \
         WHERE i.object_id = OBJECT_ID('Company') ORDER BY i.index_id",
    )
    .await;
    assert_eq!(r[0].get::<bool, _>("is_primary_key"), Some(true));
    let link = r
        .iter()
        .find(|r| r.get::<&str, _>(0) == Some("IDX_comp_supplierid"))
        .expect("filtered index listed");
    assert_eq!(link.get::<bool, _>("is_unique"), Some(true));
    assert_eq!(link.get::<bool, _>("has_filter"), Some(true));
    let cols: Vec<String> = rows(
        &mut c,
        "SELECT c.name FROM sys.indexes i JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id \
         JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id \
         WHERE i.name = 'IDX_Comp_QUICKFIND_Deleted_UpdatedDate' ORDER BY ic.key_ordinal",
    )
    .await
    .iter()
    .map(|r| r.get::<&str, _>(0).unwrap().to_string())
    .collect();
    assert_eq!(cols, ["Comp_Deleted", "Comp_UpdatedDate"]);
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT OBJECT_ID('dbo.NoSuchTable')").await,
        None
    );
    // Primary keys as INFORMATION_SCHEMA shows them ("TABLE_CONSTRAINTS
    // (Transact-SQL)", "KEY_COLUMN_USAGE (Transact-SQL)").
    let pk = text(
        &mut c,
        "SELECT k.COLUMN_NAME FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS t \
         JOIN INFORMATION_SCHEMA.KEY_COLUMN_USAGE k ON k.CONSTRAINT_NAME = t.CONSTRAINT_NAME \
         WHERE t.TABLE_NAME = 'Person' AND t.CONSTRAINT_TYPE = 'PRIMARY KEY'",
    )
    .await;
    assert_eq!(pk.as_deref(), Some("Pers_PersonId"));
}

/// 10. DDL: crmsync's sql/mssql/crm_schema.sql (CREATE TABLE with IDENTITY,
/// PRIMARY KEY, NULL/NOT NULL; CREATE [UNIQUE] INDEX with a filter; a
/// CREATE PROCEDURE batch) loads unchanged, as with `sqlcmd -i`; DROP INDEX
/// … ON and DROP TABLE; ALTER TABLE ADD / ALTER COLUMN / DROP COLUMN; DEFAULT
/// constraints ("CREATE TABLE (Transact-SQL)",
/// "CREATE INDEX (Transact-SQL)", "DROP INDEX (Transact-SQL)").
#[tokio::test]
async fn crm_schema_loads_unchanged() {
    let s = standin().await;
    let mut c = connect(&s).await;
    load_crm_schema(&mut c).await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM dbo.Users").await,
        Some(2)
    );
    assert_eq!(
        text(
            &mut c,
            "SELECT Terr_Caption FROM Territories WHERE Terr_TerritoryID = -2147483640"
        )
        .await,
        Some("Worldwide".to_string())
    );
    exec(
        &mut c,
        "DROP INDEX IDX_Comp_Name ON dbo.Company; DROP TABLE dbo.Cases",
    )
    .await;
    // ALTER TABLE: a column added (as Sage CRM's customizer does), widened,
    // and dropped; the catalog and the length rules follow
    // ("ALTER TABLE (Transact-SQL)").
    exec(
        &mut c,
        "ALTER TABLE dbo.Company ADD comp_erpcode nvarchar(5) NULL",
    )
    .await;
    let e = server_error(
        &mut c,
        "INSERT INTO dbo.Company (Comp_Name, comp_erpcode) VALUES (N'n', N'123456')",
    )
    .await;
    assert_eq!(e.code(), 2628);
    exec(
        &mut c,
        "ALTER TABLE dbo.Company ALTER COLUMN comp_erpcode nvarchar(10) NULL",
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO dbo.Company (Comp_Name, comp_erpcode) VALUES (N'n', N'123456')",
    )
    .await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT CHARACTER_MAXIMUM_LENGTH FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_NAME = 'Company' AND COLUMN_NAME = 'comp_erpcode'").await,
        Some(10)
    );
    exec(&mut c, "ALTER TABLE dbo.Company DROP COLUMN comp_erpcode").await;
    let e = server_error(&mut c, "SELECT comp_erpcode FROM dbo.Company").await;
    assert_eq!(e.code(), 207);
    // DEFAULT constraints, named or not, fill omitted columns.
    exec(
        &mut c,
        "CREATE TABLE dbo.D (Id int NOT NULL, At datetime NOT NULL DEFAULT GETDATE(), \
         S nvarchar(10) NULL DEFAULT N'x', N int NOT NULL CONSTRAINT DF_D_N DEFAULT (0)); \
         INSERT INTO dbo.D (Id) VALUES (1)",
    )
    .await;
    let r = rows(
        &mut c,
        "SELECT S, N, DATEDIFF(day, At, GETDATE()) FROM dbo.D",
    )
    .await;
    assert_eq!(r[0].get::<&str, _>(0), Some("x"));
    assert_eq!(r[0].get::<i32, _>(1), Some(0));
    assert_eq!(r[0].get::<i32, _>(2), Some(0));
    let e = server_error(&mut c, "SELECT * FROM dbo.Cases").await;
    assert_eq!(e.code(), 208);
}

/// 9 (continued). sys.indexes and sys.index_columns list the indexes of
/// every schema's tables, not only dbo's ("sys.indexes (Transact-SQL)":
/// a row per index or heap of a tabular object).
#[tokio::test]
async fn sys_indexes_list_tables_of_every_schema() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(&mut c, "CREATE SCHEMA erp").await;
    exec(
        &mut c,
        "CREATE TABLE erp.supplier (supplier_id bigint IDENTITY(1,1) NOT NULL PRIMARY KEY, \
         updated_at datetime2(3) NOT NULL); \
         CREATE INDEX supplier_updated_at_id ON erp.supplier (updated_at, supplier_id)",
    )
    .await;
    let cols: Vec<(i32, bool, String)> = rows(
        &mut c,
        "SELECT i.index_id, i.is_primary_key, c.name FROM sys.indexes i \
         JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id \
         JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id \
         WHERE i.object_id = OBJECT_ID('erp.supplier') ORDER BY i.index_id, ic.key_ordinal",
    )
    .await
    .iter()
    .map(|r| {
        (
            r.get::<i32, _>(0).unwrap(),
            r.get::<bool, _>(1).unwrap(),
            r.get::<&str, _>(2).unwrap().to_string(),
        )
    })
    .collect();
    assert_eq!(
        cols,
        [
            (1, true, "supplier_id".to_string()),
            (2, false, "updated_at".to_string()),
            (2, false, "supplier_id".to_string()),
        ]
    );
}

/// 10. DDL: a column added with a column constraint `REFERENCES`, as
/// "ALTER TABLE (Transact-SQL)" allows in `ADD <column_definition>`
/// (`[ CONSTRAINT constraint_name ] REFERENCES referenced_table_name
/// [ ( ref_column ) ]`), the way two tables that
/// reference each other are made: the new column is checked like any
/// foreign key (error 547), NULL allowed.
#[tokio::test]
async fn alter_table_adds_a_column_with_a_foreign_key() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE sup (id bigint IDENTITY(1,1) NOT NULL PRIMARY KEY, name nvarchar(10) NULL);          CREATE TABLE con (id bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,                            sup_id bigint NOT NULL REFERENCES sup (id))",
    )
    .await;
    exec(
        &mut c,
        "ALTER TABLE sup ADD primary_con bigint NULL REFERENCES con (id)",
    )
    .await;
    exec(
        &mut c,
        "ALTER TABLE con ADD other_sup bigint NULL CONSTRAINT FK_con_other REFERENCES sup",
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO sup (name) VALUES (N'a'); INSERT INTO con (sup_id) VALUES (1); \
         UPDATE sup SET primary_con = 1 WHERE id = 1; UPDATE con SET other_sup = 1",
    )
    .await;
    for sql in [
        "UPDATE sup SET primary_con = 99 WHERE id = 1",
        "UPDATE con SET other_sup = 99",
        "DELETE FROM con",
    ] {
        let e = server_error(&mut c, sql).await;
        assert_eq!((e.code(), e.class()), (547, 16), "{sql}: {}", e.message());
    }
    assert_eq!(
        scalar::<i64>(&mut c, "SELECT primary_con FROM sup WHERE id = 1").await,
        Some(1)
    );
}

/// 11. Triggers and OUTPUT ("OUTPUT Clause (Transact-SQL)"): "If the OUTPUT
/// clause is specified without also specifying the INTO keyword, the
/// target of the DML operation cannot have any enabled trigger defined on
/// it" (error 334); `OUTPUT … INTO` a table variable or a #temp table is
/// allowed on such a table. An AFTER trigger ("CREATE TRIGGER
/// (Transact-SQL)") runs once per statement and reads the statement's
/// rows from `inserted` and `deleted`. A table variable ("table
/// (Transact-SQL)") lives until the end of its batch.
#[tokio::test]
async fn output_without_into_is_334_on_a_triggered_table_and_into_works() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.Item (Id uniqueidentifier NOT NULL DEFAULT NEWID() PRIMARY KEY, \
         Code nvarchar(40) NOT NULL DEFAULT CONVERT(nvarchar(40), NEWID()), Name nvarchar(20) NULL)",
    )
    .await;
    exec(
        &mut c,
        "CREATE TABLE dbo.Audit (N int IDENTITY(1,1) NOT NULL PRIMARY KEY, ItemId uniqueidentifier NULL, What nvarchar(10) NULL)",
    )
    .await;
    // Without a trigger, OUTPUT without INTO is fine.
    let before: Option<uuid::Uuid> = scalar(
        &mut c,
        "INSERT INTO dbo.Item (Name) OUTPUT INSERTED.Id VALUES (N'plain')",
    )
    .await;
    assert!(before.is_some());
    exec(
        &mut c,
        "CREATE TRIGGER dbo.Item_Audit ON dbo.Item AFTER INSERT, UPDATE AS\n\
         BEGIN\n  SET NOCOUNT ON\n  INSERT INTO dbo.Audit (ItemId, What) SELECT Id, N'row' FROM inserted\nEND",
    )
    .await;
    for sql in [
        "INSERT INTO dbo.Item (Name) OUTPUT INSERTED.Id VALUES (N'a')",
        "UPDATE dbo.Item SET Name = N'b' OUTPUT INSERTED.Id WHERE Name = N'plain'",
        "DELETE FROM dbo.Item OUTPUT DELETED.Id WHERE Name = N'plain'",
    ] {
        let e = server_error(&mut c, sql).await;
        assert_eq!(e.code(), 334, "{sql}: {e}");
        assert!(e.message().contains("Item"), "{e}");
    }
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM dbo.Item").await,
        Some(1)
    );
    // OUTPUT … INTO a table variable: the key comes back, the trigger runs.
    let id: Option<uuid::Uuid> = scalar(
        &mut c,
        "DECLARE @k TABLE (k uniqueidentifier); \
         INSERT INTO dbo.Item (Name) OUTPUT INSERTED.Id INTO @k VALUES (N'into'); \
         SELECT k FROM @k",
    )
    .await;
    let id = id.expect("the new key");
    let stored: Option<uuid::Uuid> =
        scalar(&mut c, "SELECT Id FROM dbo.Item WHERE Name = N'into'").await;
    assert_eq!(stored, Some(id));
    let audited: Option<uuid::Uuid> =
        scalar(&mut c, "SELECT ItemId FROM dbo.Audit WHERE What = N'row'").await;
    assert_eq!(audited, Some(id), "the AFTER INSERT trigger saw the row");
    // A text code drawn by a default, into a #temp table with a column list.
    let code: Option<String> = text(
        &mut c,
        "CREATE TABLE #codes (n int NULL, code nvarchar(40) NULL); \
         INSERT INTO dbo.Item (Name) OUTPUT 7, INSERTED.Code INTO #codes (n, code) VALUES (N'coded'); \
         SELECT code FROM #codes WHERE n = 7",
    )
    .await;
    let stored = text(&mut c, "SELECT Code FROM dbo.Item WHERE Name = N'coded'").await;
    assert_eq!(code, stored);
    assert!(code.is_some());
    // The table variable went with its batch.
    let e = server_error(&mut c, "SELECT k FROM @k").await;
    assert!(matches!(e.code(), 1087 | 208), "{e}");
    // Several rows into one table variable, one trigger run for all.
    exec(&mut c, "DELETE FROM dbo.Audit").await;
    let n: Option<i32> = scalar(
        &mut c,
        "DECLARE @k TABLE (k uniqueidentifier); \
         INSERT INTO dbo.Item (Name) OUTPUT INSERTED.Id INTO @k SELECT Name + N'2' FROM dbo.Item; \
         SELECT COUNT(*) FROM @k",
    )
    .await;
    assert_eq!(n, Some(3));
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM dbo.Audit").await,
        Some(3)
    );
    // An AFTER UPDATE trigger that stamps its own table does not fire
    // itself again (RECURSIVE_TRIGGERS OFF, "ALTER DATABASE SET Options").
    exec(&mut c, "ALTER TABLE dbo.Item ADD Stamp int NULL").await;
    exec(
        &mut c,
        "CREATE TRIGGER dbo.Item_Stamp ON dbo.Item AFTER UPDATE AS \
         UPDATE t SET Stamp = ISNULL(t.Stamp, 0) + 1 FROM dbo.Item t JOIN inserted i ON i.Id = t.Id",
    )
    .await;
    exec(
        &mut c,
        "UPDATE dbo.Item SET Name = N'z' WHERE Name = N'coded'",
    )
    .await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT Stamp FROM dbo.Item WHERE Name = N'z'").await,
        Some(1)
    );
    exec(&mut c, "DROP TRIGGER dbo.Item_Stamp").await;
    // Dropped, the trigger no longer refuses OUTPUT.
    exec(&mut c, "DROP TRIGGER dbo.Item_Audit").await;
    let id: Option<uuid::Uuid> = scalar(
        &mut c,
        "INSERT INTO dbo.Item (Name) OUTPUT INSERTED.Id VALUES (N'after')",
    )
    .await;
    assert!(id.is_some());
}

/// 13. An insert-only MERGE whose OUTPUT names the source's columns beside
/// the new rows' ("MERGE (Transact-SQL)": "<output_clause> Returns a row for
/// every row in target_table that's updated, inserted, or deleted", and
/// the OUTPUT list may reference columns of the source table;
/// "OUTPUT Clause (Transact-SQL)": `from_table_name` "is a column prefix
/// that specifies a table included in the FROM clause of a DELETE,
/// UPDATE, or MERGE statement", which INSERT's OUTPUT cannot name). Each
/// key a default draws (`NEWID()`, a text code) comes back with its
/// source row's place, `OUTPUT … INTO` is allowed on a table with a
/// trigger while a bare `OUTPUT` is error 334, the AFTER INSERT trigger
/// runs once for the statement and sees every row, and a source row that
/// matches a target row by the ON condition is not inserted.
#[tokio::test]
async fn merge_output_pairs_default_keys_with_source_columns() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.Coded (Id uniqueidentifier NOT NULL DEFAULT NEWID() PRIMARY KEY, \
         Code nvarchar(40) NOT NULL DEFAULT (N'C-' + CONVERT(nvarchar(36), NEWID())), \
         Name nvarchar(20) NULL, At datetime2(3) NOT NULL DEFAULT SYSDATETIME())",
    )
    .await;
    exec(
        &mut c,
        "CREATE TABLE dbo.CodedAudit (Id uniqueidentifier NULL, Rows int NULL)",
    )
    .await;
    exec(
        &mut c,
        "CREATE TRIGGER dbo.Coded_Audit ON dbo.Coded AFTER INSERT AS\n\
         BEGIN\n  SET NOCOUNT ON\n  INSERT INTO dbo.CodedAudit (Id, Rows) SELECT Id, (SELECT COUNT(*) FROM inserted) FROM inserted\nEND",
    )
    .await;
    exec(
        &mut c,
        "CREATE TABLE #src (Name nvarchar(20) NULL, Place int NOT NULL); \
         INSERT INTO #src (Name, Place) VALUES (N'e', 5), (N'a', 1), (N'd', 4), (N'b', 2), (N'c', 3)",
    )
    .await;
    let bare = server_error(
        &mut c,
        "MERGE INTO dbo.Coded AS t USING #src AS s ON 1 = 0 \
         WHEN NOT MATCHED THEN INSERT (Name) VALUES (s.Name) OUTPUT INSERTED.Id, s.Place;",
    )
    .await;
    assert_eq!(bare.code(), 334, "{bare}");
    let merge = "MERGE INTO dbo.Coded AS t USING #src AS s ON 1 = 0 \
         WHEN NOT MATCHED THEN INSERT (Name) VALUES (s.Name) \
         OUTPUT INSERTED.Id, INSERTED.Code, INSERTED.Name, s.Place INTO #keys (Id, Code, Name, Place);";
    let done = c
        .execute(
            format!(
                "CREATE TABLE #keys (Id uniqueidentifier NULL, Code nvarchar(40) NULL, \
                 Name nvarchar(20) NULL, Place int NULL); {merge}"
            ),
            &[],
        )
        .await
        .expect("MERGE … OUTPUT … INTO");
    assert_eq!(done.total(), 5, "the MERGE counts the rows it inserted");
    // Every output row names the stored row its source row became.
    let paired: Vec<(i32, String)> = rows(
        &mut c,
        "SELECT k.Place, t.Name FROM #keys k JOIN dbo.Coded t ON t.Id = k.Id AND t.Code = k.Code \
         AND t.Name = k.Name ORDER BY k.Place",
    )
    .await
    .iter()
    .map(|r| {
        (
            r.get::<i32, _>(0).unwrap(),
            r.get::<&str, _>(1).unwrap().to_string(),
        )
    })
    .collect();
    let expected: Vec<(i32, String)> = ["a", "b", "c", "d", "e"]
        .iter()
        .enumerate()
        .map(|(i, n)| (i as i32 + 1, n.to_string()))
        .collect();
    assert_eq!(paired, expected);
    let codes: Option<i32> = scalar(
        &mut c,
        "SELECT COUNT(DISTINCT Code) FROM dbo.Coded WHERE Code LIKE N'C-%'",
    )
    .await;
    assert_eq!(codes, Some(5), "each row drew its own code");
    // One trigger run that saw all five rows.
    let audit: Vec<(i32, i32)> = rows(
        &mut c,
        "SELECT COUNT(*), MIN(Rows) FROM dbo.CodedAudit a JOIN dbo.Coded t ON t.Id = a.Id",
    )
    .await
    .iter()
    .map(|r| (r.get::<i32, _>(0).unwrap(), r.get::<i32, _>(1).unwrap()))
    .collect();
    assert_eq!(audit, [(5, 5)]);
    // Matched by the ON condition: nothing more is inserted.
    exec(&mut c, "INSERT INTO #src (Name, Place) VALUES (N'f', 6)").await;
    let done = c
        .execute(
            "DELETE FROM #keys; MERGE INTO dbo.Coded AS t USING #src AS s ON t.Name = s.Name \
             WHEN NOT MATCHED THEN INSERT (Name) VALUES (s.Name) \
             OUTPUT INSERTED.Id, s.Place INTO #keys (Id, Place);",
            &[],
        )
        .await
        .expect("a second MERGE");
    assert_eq!(done.rows_affected().last(), Some(&1));
    let only: Option<i32> = scalar(
        &mut c,
        "SELECT k.Place FROM #keys k JOIN dbo.Coded t ON t.Id = k.Id AND t.Name = N'f'",
    )
    .await;
    assert_eq!(only, Some(6));
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM dbo.Coded").await,
        Some(6)
    );
}

/// 12. A bulk load without KEEP_NULLS stores a column's default where NULL
/// is sent ("INSERT (BULK) (Transact-SQL)": "KEEP_NULLS Specifies that
/// empty columns should retain a null value during the bulk-import
/// operation, instead of having any default values for the columns
/// inserted"). tiberius sends no WITH options, so its loads are such.
#[tokio::test]
async fn bulk_load_without_keep_nulls_stores_column_defaults() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.Loaded (Id int NOT NULL PRIMARY KEY, \
         Kind nvarchar(1) NOT NULL DEFAULT N'S', Note nvarchar(20) NULL DEFAULT N'none', \
         At datetime2(3) NOT NULL DEFAULT SYSDATETIME())",
    )
    .await;
    let mut req = c.bulk_insert("dbo.Loaded").await.expect("bulk insert");
    for (i, kind) in [(1i32, None), (2, Some("X"))] {
        let mut row = tiberius::TokenRow::new();
        row.push(tiberius::ColumnData::I32(Some(i)));
        row.push(tiberius::ColumnData::String(kind.map(Into::into)));
        row.push(tiberius::ColumnData::String(None));
        row.push(tiberius::ColumnData::DateTime2(None));
        req.send(row).await.unwrap();
    }
    assert_eq!(req.finalize().await.unwrap().total(), 2);
    let got: Vec<(String, String, bool)> = rows(
        &mut c,
        "SELECT Kind, Note, CASE WHEN At > DATEADD(minute, -5, SYSDATETIME()) THEN 1 ELSE 0 END FROM dbo.Loaded ORDER BY Id",
    )
    .await
    .iter()
    .map(|r| {
        (
            r.get::<&str, _>(0).unwrap().to_string(),
            r.get::<&str, _>(1).unwrap().to_string(),
            r.get::<i32, _>(2) == Some(1),
        )
    })
    .collect();
    assert_eq!(
        got,
        [
            ("S".to_string(), "none".to_string(), true),
            ("X".to_string(), "none".to_string(), true)
        ]
    );
}

/// A table's leaf-level deletes count up as soon as a DELETE is done, seen
/// from any session ("sys.dm_db_index_operational_stats (Transact-SQL)":
/// leaf_delete_count, "Cumulative count of leaf-level deletes", with
/// leaf_ghost_count for deletes ghosted first), and its row count is in
/// "sys.dm_db_partition_stats (Transact-SQL)" (row_count, index_id 0 for a
/// heap, 1 for a clustered index) and "sys.partitions (Transact-SQL)"
/// (rows, "the approximate number of rows in this partition"). An UPDATE or
/// INSERT leaves the delete count alone.
#[tokio::test]
async fn operational_stats_count_deletes_at_once_for_every_session() {
    let s = standin().await;
    let mut writer = connect(&s).await;
    let mut reader = connect(&s).await;
    exec(
        &mut writer,
        "CREATE TABLE dbo.t (id int NOT NULL PRIMARY KEY, v int NULL)",
    )
    .await;
    exec(
        &mut writer,
        "INSERT INTO dbo.t VALUES (1, 1), (2, 2), (3, 3)",
    )
    .await;
    let deletes = "SELECT CAST(SUM(leaf_delete_count + leaf_ghost_count) AS bigint) \
                   FROM sys.dm_db_index_operational_stats(DB_ID(), OBJECT_ID('dbo.t'), NULL, NULL) \
                   WHERE index_id IN (0, 1)";
    let before: i64 = scalar(&mut reader, deletes).await.unwrap();
    exec(&mut writer, "UPDATE dbo.t SET v = 9 WHERE id = 1").await;
    exec(&mut writer, "INSERT INTO dbo.t VALUES (4, 4)").await;
    assert_eq!(scalar::<i64>(&mut reader, deletes).await, Some(before));
    exec(&mut writer, "DELETE FROM dbo.t WHERE id IN (2, 3)").await;
    assert_eq!(scalar::<i64>(&mut reader, deletes).await, Some(before + 2));
    let count: Option<i64> = scalar(
        &mut reader,
        "SELECT CAST(SUM(row_count) AS bigint) FROM sys.dm_db_partition_stats \
         WHERE object_id = OBJECT_ID('dbo.t') AND index_id IN (0, 1)",
    )
    .await;
    assert_eq!(count, Some(2));
    let rows: Option<i64> = scalar(
        &mut reader,
        "SELECT CAST(SUM(p.rows) AS bigint) FROM sys.partitions p \
         WHERE p.object_id = OBJECT_ID('dbo.t') AND p.index_id IN (0, 1)",
    )
    .await;
    assert_eq!(rows, Some(2));
}

/// 13. Built-ins newer than SQL Server 2016, the oldest version crmsync
/// supports, are refused as SQL Server 2016 to 2019 refuse them: GREATEST,
/// LEAST and DATETRUNC came with 2022 ("Logical functions - GREATEST
/// (Transact-SQL)", "DATETRUNC (Transact-SQL)": "Applies to: SQL Server
/// 2022 (16.x) and later versions"; older servers answer "Msg 195 … is not
/// a recognized built-in function name"), STRING_AGG, CONCAT_WS and
/// TRANSLATE with 2017 ("STRING_AGG (Transact-SQL)": "Applies to: SQL
/// Server 2017 (14.x) and later versions"), IS [NOT] DISTINCT FROM with
/// 2022 ("IS [NOT] DISTINCT FROM (Transact-SQL)"). PostgreSQL has them all,
/// so without this a statement using one would run here and fail on a
/// customer's server. The greatest of a VALUES list (crmsync's spelling)
/// runs.
#[tokio::test]
async fn builtins_newer_than_sql_server_2016_are_refused() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE t (a int NULL, b int NULL, s nvarchar(10) NULL)",
    )
    .await;
    let cases: &[(&str, u32)] = &[
        ("SELECT GREATEST(a, b) FROM t", 195),
        ("SELECT LEAST(a, b) FROM t", 195),
        ("SELECT DATETRUNC(day, GETDATE())", 195),
        ("SELECT STRING_AGG(s, N',') FROM t", 195),
        ("SELECT CONCAT_WS(N',', s, s) FROM t", 195),
        ("SELECT TRANSLATE(s, N'a', N'b') FROM t", 195),
        ("SELECT a FROM t WHERE a IS DISTINCT FROM b", 156),
        ("SELECT a FROM t WHERE a IS NOT DISTINCT FROM b", 156),
    ];
    for (sql, code) in cases {
        let e = server_error(&mut c, sql).await;
        assert_eq!((e.code(), e.class()), (*code, 15), "{sql}: {}", e.message());
    }
    let e = server_error(&mut c, "SELECT GREATEST(a, b) FROM t").await;
    assert_eq!(
        e.message(),
        "'GREATEST' is not a recognized built-in function name."
    );
    exec(&mut c, "INSERT INTO t (a, b) VALUES (1, 3), (4, 2)").await;
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT (SELECT MAX(v) FROM (VALUES (a), (b)) AS x(v)) FROM t WHERE a = 1"
        )
        .await,
        Some(3)
    );
}

/// 20. TRUNCATE TABLE ("TRUNCATE TABLE (Transact-SQL)"): removes all rows
/// of a table, a session's #temp table included; it "can be rolled back"
/// inside a transaction; a table that does not exist is error 4701.
/// `OBJECT_ID('tempdb..#t')` names the session's own temporary table
/// ("OBJECT_ID (Transact-SQL)"), so a batch can create it once and empty it
/// on every later use.
#[tokio::test]
async fn truncate_empties_a_temp_table_and_rolls_back() {
    let s = standin().await;
    let mut c = connect(&s).await;
    let reuse = "IF OBJECT_ID('tempdb..#stage') IS NULL CREATE TABLE #stage (v int NULL) \
                 ELSE TRUNCATE TABLE #stage; INSERT INTO #stage VALUES (1), (2)";
    exec(&mut c, reuse).await;
    exec(&mut c, reuse).await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM #stage").await,
        Some(2)
    );
    exec(&mut c, "BEGIN TRANSACTION; TRUNCATE TABLE #stage").await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM #stage").await,
        Some(0)
    );
    exec(&mut c, "ROLLBACK TRANSACTION").await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM #stage").await,
        Some(2)
    );
    exec(
        &mut c,
        "CREATE TABLE t (v int NULL); INSERT INTO t VALUES (7); TRUNCATE TABLE dbo.t",
    )
    .await;
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM t").await,
        Some(0)
    );
    let e = server_error(&mut c, "TRUNCATE TABLE nosuch").await;
    assert_eq!((e.code(), e.class()), (4701, 16), "{}", e.message());
    // Another session's #stage is its own.
    let mut other = connect(&s).await;
    let e = server_error(&mut other, "TRUNCATE TABLE #stage").await;
    assert_eq!(e.code(), 4701, "{}", e.message());
}

/// 21. Integers to binary ("CAST and CONVERT (Transact-SQL)", "binary and
/// varbinary"): "when other data types are converted to binary, the data
/// is padded or truncated on the left", so an integer becomes its
/// big-endian bytes and `binary(1)` keeps the lowest; `+` concatenates
/// binary strings ("+ (String Concatenation) (Transact-SQL)") and
/// SUBSTRING takes bytes of them ("SUBSTRING (Transact-SQL)").
#[tokio::test]
async fn integers_cast_to_binary_big_endian_and_concatenate() {
    let s = standin().await;
    let mut c = connect(&s).await;
    let cases: [(&str, &[u8]); 7] = [
        ("SELECT CAST(CAST(258 AS bigint) AS binary(8))", &[0, 0, 0, 0, 0, 0, 1, 2]),
        ("SELECT CAST(21 AS binary(1))", &[21]),
        ("SELECT CAST(277 AS binary(1))", &[21]),
        (
            "SELECT CAST(22 AS binary(1)) + SUBSTRING(CAST(CAST(258 AS bigint) AS binary(8)), 7, 2)",
            &[22, 1, 2],
        ),
        ("SELECT CAST(CAST(-2 AS bigint) AS binary(8))", &[255, 255, 255, 255, 255, 255, 255, 254]),
        ("SELECT CAST(1 AS binary(6))", &[0, 0, 0, 0, 0, 1]),
        ("SELECT CAST(-2 AS varbinary(8))", &[255, 255, 255, 254]),
    ];
    for (sql, want) in cases {
        let got: Vec<u8> = rows(&mut c, sql).await[0]
            .get::<&[u8], _>(0)
            .unwrap()
            .to_vec();
        assert_eq!(got, want, "{sql}");
    }
    exec(&mut c, "CREATE TABLE k (k bigint NOT NULL)").await;
    exec(&mut c, "INSERT INTO k VALUES (5), (70000)").await;
    let got: Vec<Vec<u8>> = rows(
        &mut c,
        "SELECT CAST(20 + CASE WHEN k < 256 THEN 1 ELSE 3 END AS binary(1)) \
         + SUBSTRING(CAST(k AS binary(8)), 9 - CASE WHEN k < 256 THEN 1 ELSE 3 END, \
                     CASE WHEN k < 256 THEN 1 ELSE 3 END) FROM k ORDER BY k",
    )
    .await
    .iter()
    .map(|r| r.get::<&[u8], _>(0).unwrap().to_vec())
    .collect();
    assert_eq!(got, vec![vec![21, 5], vec![23, 1, 0x11, 0x70]]);
}
