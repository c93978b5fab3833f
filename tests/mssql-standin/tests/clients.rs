//! The ways crmsync's SQL Server endpoint will use tiberius: a bb8 pool with
//! health checks, and bulk_insert.

use crate::support::*;
use tiberius::numeric::Numeric;
use tiberius::time::DateTime;
use tiberius::{ColumnData, IntoRow};

/// bb8-tiberius checks each connection with `SELECT 1` before handing it
/// out; the pool must open, validate and reuse connections.
#[tokio::test]
async fn bb8_pool_health_checks_pass() {
    let s = standin().await;
    let config = tiberius_config(s.port(), PASSWORD, tiberius::EncryptionLevel::NotSupported);
    let manager = bb8_tiberius::ConnectionManager::new(config);
    let pool = bb8::Pool::builder()
        .max_size(3)
        .test_on_check_out(true)
        .build(manager)
        .await
        .expect("build the pool");
    let mut handles = Vec::new();
    for i in 0..6i32 {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = pool.get().await.expect("checked-out connection");
            let row = conn
                .query("SELECT @P1 * 2", &[&i])
                .await
                .unwrap()
                .into_row()
                .await
                .unwrap()
                .unwrap();
            row.get::<i32, _>(0)
        }));
    }
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.unwrap());
    }
    assert_eq!(got, (0..6).map(|i| Some(i * 2)).collect::<Vec<_>>());
    assert!(pool.state().connections <= 3);
}

/// tiberius bulk_insert: SELECT TOP 0 for the metadata (identity columns are
/// read-only and left out), INSERT BULK, then one BulkLoad message.
#[tokio::test]
async fn bulk_insert_of_100000_rows() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.Bulk (Id int IDENTITY(1,1) NOT NULL PRIMARY KEY, N int NOT NULL, \
         Name nvarchar(40) NULL, Amount numeric(24,6) NULL, At datetime NULL)",
    )
    .await;
    let at = chrono::NaiveDate::from_ymd_opt(2024, 1, 1)
        .unwrap()
        .and_hms_milli_opt(12, 0, 0, 857)
        .unwrap();
    let mut req = c.bulk_insert("dbo.Bulk").await.expect("start bulk insert");
    for i in 0..100_000i32 {
        let name = if i % 10 == 0 {
            None
        } else {
            Some(format!("name {i} é"))
        };
        let mut row = (i, name).into_row();
        row.push(ColumnData::Numeric(Some(Numeric::new_with_scale(
            i128::from(i) * 1_001_000,
            6,
        ))));
        // datetime travels as days since 1900-01-01 and 1/300 s ticks.
        let days = (at.date() - chrono::NaiveDate::from_ymd_opt(1900, 1, 1).unwrap()).num_days();
        row.push(ColumnData::DateTime(Some(DateTime::new(
            days as i32,
            12 * 3600 * 300 + 257,
        ))));
        req.send(row).await.expect("send a row");
    }
    let r = req.finalize().await.expect("finish bulk insert");
    assert_eq!(r.total(), 100_000);
    let row = c
        .simple_query("SELECT COUNT(*), SUM(CAST(N AS bigint)), COUNT(Name), MAX(Id), MIN(CONVERT(varchar(23), At, 121)) FROM dbo.Bulk")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<i32, _>(0), Some(100_000));
    assert_eq!(row.get::<i64, _>(1), Some(4_999_950_000));
    assert_eq!(row.get::<i32, _>(2), Some(90_000));
    assert_eq!(row.get::<i32, _>(3), Some(100_000));
    assert_eq!(row.get::<&str, _>(4), Some("2024-01-01 12:00:00.857"));
    let name: Option<String> = text(&mut c, "SELECT Name FROM dbo.Bulk WHERE N = 12345").await;
    assert_eq!(name.as_deref(), Some("name 12345 é"));
    // And all of it back in one result set (thousands of packets).
    let all = rows(&mut c, "SELECT N, Name, Amount FROM dbo.Bulk ORDER BY N").await;
    assert_eq!(all.len(), 100_000);
    assert_eq!(all[99_999].get::<i32, _>(0), Some(99_999));
    assert_eq!(all[99_999].get::<&str, _>(1), Some("name 99999 é"));
}
