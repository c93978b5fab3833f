//! T-SQL of the shapes a sync endpoint sends (keyset pages, IN lists,
//! updates stamped with GETDATE(), soft deletes), run against crm_schema.sql.

use crate::support::*;
use chrono::NaiveDateTime;

#[tokio::test]
async fn keyset_paging_updates_and_soft_deletes() {
    let s = standin().await;
    let mut c = connect(&s).await;
    load_crm_schema(&mut c).await;
    let t0 =
        NaiveDateTime::parse_from_str("2024-05-01 08:00:00.000", "%Y-%m-%d %H:%M:%S%.f").unwrap();
    for i in 0..7i32 {
        // Pairs of rows share a timestamp, as rows of one transaction do.
        let at = t0 + chrono::Duration::seconds(i64::from(i / 2));
        c.execute(
            "INSERT INTO dbo.Company (Comp_Name, Comp_Type, Comp_UpdatedDate, Comp_SecTerr) VALUES (@P1, @P2, @P3, @P4)",
            &[&format!("Company {i}"), &"Supplier", &at, &-2147483640i32],
        )
        .await
        .unwrap();
    }
    // Keyset pages of 3 over (Comp_UpdatedDate, Comp_CompanyId).
    let page_sql = "SELECT TOP (@P1) c.Comp_CompanyId, c.Comp_UpdatedDate FROM dbo.Company AS c WITH (NOLOCK) \
         WHERE c.Comp_UpdatedDate IS NOT NULL AND c.Comp_Type = 'supplier   ' \
         AND (c.Comp_UpdatedDate > CAST(@P2 AS datetime) OR (c.Comp_UpdatedDate = CAST(@P2 AS datetime) AND c.Comp_CompanyId > @P3)) \
         ORDER BY c.Comp_UpdatedDate, c.Comp_CompanyId";
    let mut seen = Vec::new();
    let mut mark = (t0 - chrono::Duration::days(1), 0i32);
    loop {
        let page = c
            .query(page_sql, &[&3i32, &mark.0, &mark.1])
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        for r in &page {
            let id: i32 = r.get("Comp_CompanyId").unwrap();
            let at: NaiveDateTime = r.get("Comp_UpdatedDate").unwrap();
            seen.push(id);
            mark = (at, id);
        }
    }
    assert_eq!(seen, (1..=7).collect::<Vec<_>>(), "every row exactly once");

    // + concatenates character data, columns included.
    assert_eq!(
        text(&mut c, "SELECT Comp_Type + N': ' + Comp_Name + N' (' + UPPER(Comp_Type) + N')' FROM dbo.Company WHERE Comp_CompanyId = 1").await.as_deref(),
        Some("Supplier: Company 0 (SUPPLIER)")
    );
    // A key list passed as one string, split by STRING_SPLIT ("STRING_SPLIT
    // (Transact-SQL)", SQL Server 2016+).
    let n = c
        .query(
            "SELECT COUNT(*) FROM dbo.Company WHERE Comp_CompanyId IN (SELECT CAST(value AS int) FROM STRING_SPLIT(@P1, ','))",
            &[&"2,4,6,99"],
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(n, Some(3));
    // IN list of parameters, update stamped by the server clock.
    let r = c
        .execute(
            "UPDATE dbo.Company SET Comp_Name = @P1 + N' (updated)', Comp_UpdatedBy = @P2, Comp_UpdatedDate = GETDATE(), \
             Comp_TimeStamp = GETDATE() WHERE Comp_CompanyId IN (@P3, @P4, @P5)",
            &[&"X", &2i32, &1i32, &3i32, &5i32],
        )
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), &[3]);
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM dbo.Company WHERE [Comp_Name] = N'x (UPDATED)' AND Comp_UpdatedDate = Comp_TimeStamp").await,
        Some(3)
    );
    // Soft delete, then the live-row filter Sage CRM's views use.
    c.execute(
        "UPDATE dbo.Company SET Comp_Deleted = 1 WHERE Comp_CompanyId = @P1",
        &[&2i32],
    )
    .await
    .unwrap();
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT COUNT(*) FROM dbo.Company WHERE Comp_Deleted IS NULL"
        )
        .await,
        Some(6)
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM dbo.Company c WHERE EXISTS (SELECT 1 FROM dbo.Users u WHERE u.User_UserId = c.Comp_UpdatedBy)").await,
        Some(3)
    );
    // A value that does not fit tinyint is SQL Server's arithmetic overflow.
    let e = match c
        .execute(
            "UPDATE dbo.Company SET Comp_Deleted = @P1 WHERE Comp_CompanyId = 1",
            &[&300i32],
        )
        .await
    {
        Err(tiberius::error::Error::Server(e)) => e,
        other => panic!("expected an overflow error, got {other:?}"),
    };
    assert_eq!(e.code(), 220);
    // The linking column is unique among live rows only (filtered index).
    exec(
        &mut c,
        "UPDATE dbo.Company SET comp_supplierid = N'S-1' WHERE Comp_CompanyId = 2",
    )
    .await;
    exec(
        &mut c,
        "UPDATE dbo.Company SET comp_supplierid = N's-1' WHERE Comp_CompanyId = 4",
    )
    .await;
    let e = server_error(
        &mut c,
        "UPDATE dbo.Company SET comp_supplierid = N'S-1' WHERE Comp_CompanyId = 6",
    )
    .await;
    assert_eq!(e.code(), 2601);
}

/// Session-scoped #temp tables, the usual staging area for bulk loads
/// ("CREATE TABLE (Transact-SQL)": temporary tables): visible to their
/// session only, loadable with bulk_insert, found by OBJECT_ID('tempdb..#t').
#[tokio::test]
async fn temp_tables_are_per_session_and_bulk_loadable() {
    let s = standin().await;
    let mut a = connect(&s).await;
    let mut b = connect(&s).await;
    exec(&mut a, "CREATE TABLE #stage (Id int NOT NULL PRIMARY KEY, Name nvarchar(20) NULL, At datetime NULL)").await;
    let mut req = a
        .bulk_insert("#stage")
        .await
        .expect("bulk insert into #stage");
    for i in 0..50i32 {
        use tiberius::IntoRow;
        let mut row = (i, format!("n{i}")).into_row();
        row.push(tiberius::ColumnData::DateTime(None));
        req.send(row).await.unwrap();
    }
    assert_eq!(req.finalize().await.unwrap().total(), 50);
    assert_eq!(
        scalar::<i32>(&mut a, "SELECT COUNT(*) FROM #stage WHERE Name LIKE N'N1%'").await,
        Some(11)
    );
    assert_eq!(
        scalar::<i32>(
            &mut a,
            "SELECT CASE WHEN OBJECT_ID('tempdb..#stage') IS NOT NULL THEN 1 ELSE 0 END"
        )
        .await,
        Some(1)
    );
    assert_eq!(
        scalar::<i32>(
            &mut b,
            "SELECT CASE WHEN OBJECT_ID('tempdb..#stage') IS NOT NULL THEN 1 ELSE 0 END"
        )
        .await,
        Some(0)
    );
    let e = server_error(&mut b, "SELECT * FROM #stage").await;
    assert_eq!(e.code(), 208);
    // Set-based apply from the staging table, in T-SQL's UPDATE … FROM form.
    exec(
        &mut a,
        "CREATE TABLE dbo.Target (Id int NOT NULL PRIMARY KEY, Name nvarchar(20) NULL); \
                  INSERT INTO dbo.Target VALUES (1, N'old'), (2, N'old'), (99, N'keep')",
    )
    .await;
    let r = a
        .execute(
            "UPDATE t SET t.Name = s.Name FROM dbo.Target AS t INNER JOIN #stage s ON s.Id = t.Id WHERE s.Id < @P1",
            &[&50i32],
        )
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), &[2]);
    let names: Vec<String> = rows(&mut a, "SELECT Name FROM dbo.Target ORDER BY Id")
        .await
        .iter()
        .map(|r| r.get::<&str, _>(0).unwrap().to_string())
        .collect();
    assert_eq!(names, ["n1", "n2", "keep"]);
    exec(
        &mut a,
        "IF OBJECT_ID('tempdb..#stage') IS NOT NULL DROP TABLE #stage",
    )
    .await;
    let e = server_error(&mut a, "SELECT * FROM #stage").await;
    assert_eq!(e.code(), 208);
}

/// T-SQL's DELETE alias FROM … JOIN and MERGE … ; ("DELETE (Transact-SQL)",
/// "MERGE (Transact-SQL)").
#[tokio::test]
async fn delete_from_join_and_merge() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.M (Id int NOT NULL PRIMARY KEY, V nvarchar(10) NULL); \
         CREATE TABLE dbo.Gone (Id int NOT NULL); \
         INSERT INTO dbo.M VALUES (1, N'a'), (2, N'b'), (3, N'c'); INSERT INTO dbo.Gone VALUES (2)",
    )
    .await;
    let r = c
        .execute(
            "DELETE m FROM dbo.M AS m INNER JOIN dbo.Gone g ON g.Id = m.Id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), &[1]);
    let r = c
        .execute(
            "MERGE dbo.M AS t USING (SELECT @P1 AS Id, @P2 AS V) AS s ON t.Id = s.Id \
             WHEN MATCHED THEN UPDATE SET V = s.V \
             WHEN NOT MATCHED THEN INSERT (Id, V) VALUES (s.Id, s.V);",
            &[&4i32, &"d"],
        )
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), &[1]);
    let got: Vec<(i32, String)> = rows(&mut c, "SELECT Id, V FROM dbo.M ORDER BY Id")
        .await
        .iter()
        .map(|r| (r.get(0).unwrap(), r.get::<&str, _>(1).unwrap().to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "a".to_string()),
            (3, "c".to_string()),
            (4, "d".to_string())
        ]
    );
}

/// UPDATE … OUTPUT DELETED.x, INSERTED.x returns each row's old and new
/// values ("OUTPUT Clause (Transact-SQL)").
#[tokio::test]
async fn update_output_deleted_and_inserted() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.V (Id int NOT NULL PRIMARY KEY, Name nvarchar(20) NULL, N int NULL); \
         INSERT INTO dbo.V VALUES (1, N'a', 10), (2, N'b', 20), (3, N'c', 30)",
    )
    .await;
    let got = c
        .query(
            "UPDATE dbo.V SET Name = @P1, N = N + 1 OUTPUT DELETED.Name AS OldName, INSERTED.Name, DELETED.N, INSERTED.N AS NewN WHERE Id >= @P2",
            &[&"z", &2i32],
        )
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let mut rows: Vec<(String, String, i32, i32)> = got
        .iter()
        .map(|r| {
            (
                r.get::<&str, _>("OldName").unwrap().to_string(),
                r.get::<&str, _>("Name").unwrap().to_string(),
                r.get::<i32, _>("N").unwrap(),
                r.get::<i32, _>("NewN").unwrap(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("b".to_string(), "z".to_string(), 20, 21),
            ("c".to_string(), "z".to_string(), 30, 31)
        ]
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT SUM(N) FROM dbo.V").await,
        Some(10 + 21 + 31)
    );
}

/// Keys kept as text (as crmsync's link table keeps them) bound as nvarchar
/// against int columns: SQL Server converts the nvarchar to int by data type
/// precedence, and fails with 245 only when the text is not a number ("Data
/// type precedence (Transact-SQL)", "Data type conversion (Database Engine)").
#[tokio::test]
async fn string_parameters_convert_to_the_column_type() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.K (Id int NOT NULL PRIMARY KEY, Qty int NULL, Name nvarchar(10) NULL)",
    )
    .await;
    c.execute(
        "INSERT INTO dbo.K (Id, Qty, Name) VALUES (@P1, @P2, @P3)",
        &[&"7", &"3", &"seven"],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO dbo.K (Id, Qty, Name) VALUES (@P1, @P2, @P3)",
        &[&"8", &"4", &"8"],
    )
    .await
    .unwrap();
    c.execute("UPDATE dbo.K SET Qty = @P1 WHERE Id = @P2", &[&"30", &"7"])
        .await
        .unwrap();
    let got = c
        .query(
            "SELECT Id, Qty FROM dbo.K WHERE Id IN (@P1, @P2) AND Qty >= @P3 ORDER BY Id",
            &[&"7", &"8", &"4"],
        )
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let got: Vec<(i32, i32)> = got
        .iter()
        .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
        .collect();
    assert_eq!(got, [(7, 30), (8, 4)]);
    // The same parameter may meet an int and an nvarchar column.
    let n = c
        .query(
            "SELECT COUNT(*) FROM dbo.K WHERE Id = @P1 OR Name = @P1",
            &[&"8"],
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap()
        .get::<i32, _>(0);
    assert_eq!(n, Some(1));
    let e = match c
        .query("SELECT * FROM dbo.K WHERE Id = @P1", &[&"seven"])
        .await
    {
        Err(tiberius::error::Error::Server(e)) => e,
        other => panic!("expected 245, got {:?}", other.map(|_| ())),
    };
    assert_eq!(e.code(), 245);
}

/// A schema of its own, as a tool creates for its bookkeeping: `CREATE
/// SCHEMA [name]` alone in its batch ("CREATE SCHEMA (Transact-SQL)": "must
/// be the only statement in the batch"), listed in `sys.schemas` and owning
/// the tables created in it (`sys.tables.schema_id`; "sys.schemas
/// (Transact-SQL)", "sys.tables (Transact-SQL)"). Tables there with
/// `varbinary(n|max)`, `bit`, `datetime2(3) DEFAULT SYSUTCDATETIME()`, a
/// column `COLLATE`d binary, a `PRIMARY KEY NONCLUSTERED` and a filtered
/// index ("CREATE TABLE (Transact-SQL)", "Create filtered indexes").
#[tokio::test]
async fn a_schema_of_its_own_with_binary_keys_and_a_filtered_index() {
    let s = standin().await;
    let mut c = connect(&s).await;
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT COUNT(*) FROM sys.schemas WHERE name = 'bookkeeping'"
        )
        .await,
        Some(0)
    );
    exec(&mut c, "CREATE SCHEMA [bookkeeping]").await;
    exec(
        &mut c,
        "CREATE TABLE [bookkeeping].links (
             entity  nvarchar(200) NOT NULL,
             k       varbinary(450) NOT NULL,
             shadow  varbinary(max) NOT NULL,
             deleted bit NOT NULL DEFAULT 0,
             note    nvarchar(400) COLLATE Latin1_General_100_BIN2 NULL,
             at      datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
             PRIMARY KEY NONCLUSTERED (entity, k)
         );
         CREATE INDEX links_live ON [bookkeeping].links (entity) WHERE deleted = 0",
    )
    .await;
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT COUNT(*) FROM sys.schemas WHERE name = 'bookkeeping'"
        )
        .await,
        Some(1)
    );
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT COUNT(*) FROM sys.tables t JOIN sys.schemas s ON s.schema_id = t.schema_id \
             WHERE s.name = 'bookkeeping' AND t.name = 'links'"
        )
        .await,
        Some(1)
    );
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT COUNT(*) FROM sys.tables t JOIN sys.schemas s ON s.schema_id = t.schema_id \
             WHERE s.name = 'dbo' AND t.name = 'links'"
        )
        .await,
        Some(0)
    );
    // A second CREATE SCHEMA of the name fails.
    let e = server_error(&mut c, "CREATE SCHEMA [bookkeeping]").await;
    assert_eq!(e.class(), 16);
}

/// MERGE as an upsert: a table hint on the target (`WITH (HOLDLOCK)`),
/// a `VALUES` source with column names, bracketed column names in `UPDATE
/// SET` and `INSERT (…)` ("MERGE (Transact-SQL)": `MERGE [ INTO ]
/// <target_table> [ WITH ( <merge_hint> ) ] [ [ AS ] table_alias ] USING
/// <table_source> …`; "Table Value Constructor (Transact-SQL)"), with
/// `varbinary` parameters.
#[tokio::test]
async fn merge_upserts_with_a_hint_values_and_bracketed_columns() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.kv (entity nvarchar(50) NOT NULL, [key] varbinary(100) NOT NULL, \
         [value] varbinary(max) NOT NULL, PRIMARY KEY (entity, [key]))",
    )
    .await;
    let upsert = "MERGE dbo.kv WITH (HOLDLOCK) AS t \
         USING (VALUES (@P2, @P3), (@P4, @P5)) AS u ([key], [value]) \
         ON t.entity = @P1 AND t.[key] = u.[key] \
         WHEN MATCHED THEN UPDATE SET [value] = u.[value] \
         WHEN NOT MATCHED THEN INSERT (entity, [key], [value]) VALUES (@P1, u.[key], u.[value]);";
    let (k1, k2) = (vec![0x15u8, 0x01], vec![0x02u8, b'a', 0x00]);
    for (v1, v2) in [(vec![1u8], vec![2u8]), (vec![3u8, 0], vec![4u8])] {
        let r = c
            .execute(upsert, &[&"e", &k1, &v1, &k2, &v2])
            .await
            .unwrap();
        assert_eq!(r.total(), 2);
    }
    let got: Vec<(Vec<u8>, Vec<u8>)> =
        rows(&mut c, "SELECT [key], [value] FROM dbo.kv ORDER BY [key]")
            .await
            .iter()
            .map(|r| {
                (
                    r.get::<&[u8], _>(0).unwrap().to_vec(),
                    r.get::<&[u8], _>(1).unwrap().to_vec(),
                )
            })
            .collect();
    assert_eq!(got, vec![(k2, vec![4u8]), (k1, vec![3u8, 0])]);
}

/// A session-owned application lock lasts as long as the session: closing
/// the connection releases it ("sp_getapplock (Transact-SQL)": "Locks
/// associated with the current session are released when the session is
/// logged out").
#[tokio::test]
async fn a_session_applock_goes_with_its_connection() {
    let s = standin().await;
    let get = "DECLARE @r int; EXEC @r = sp_getapplock @Resource = N'job:one', \
               @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 0; SELECT @r";
    let mut a = connect(&s).await;
    let mut b = connect(&s).await;
    assert_eq!(scalar::<i32>(&mut a, get).await, Some(0));
    assert_eq!(scalar::<i32>(&mut b, get).await, Some(-1));
    drop(a);
    let mut got = None;
    for _ in 0..100 {
        got = scalar::<i32>(&mut b, get).await;
        if got == Some(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(got, Some(0), "the closed session's lock was released");
}

/// binary and varbinary converted to integer types: the bytes read
/// big-endian, padded with zeros on the left, as two's complement (tinyint
/// unsigned) ("CAST and CONVERT (Transact-SQL)": "Converting binary and
/// varbinary data"; "binary and varbinary (Transact-SQL)"), also of a
/// SUBSTRING of a varbinary column.
#[tokio::test]
async fn binary_converts_to_integers_big_endian() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.bin (id int NOT NULL PRIMARY KEY, v varbinary(20) NOT NULL); \
         INSERT INTO dbo.bin VALUES (1, 0x0100), (2, 0xFFFFFFFF), (3, 0x8000000000000000), \
           (4, 0x01020304050607), (5, 0x15FF), (6, 0xFFFF)",
    )
    .await;
    let big = |id: i32| format!("SELECT CAST(v AS bigint) FROM dbo.bin WHERE id = {id}");
    assert_eq!(scalar::<i64>(&mut c, &big(1)).await, Some(256));
    assert_eq!(scalar::<i64>(&mut c, &big(2)).await, Some(4_294_967_295));
    assert_eq!(scalar::<i64>(&mut c, &big(3)).await, Some(i64::MIN));
    assert_eq!(
        scalar::<i64>(&mut c, &big(4)).await,
        Some(0x0001_0203_0405_0607)
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT CAST(v AS int) FROM dbo.bin WHERE id = 2").await,
        Some(-1)
    );
    assert_eq!(
        scalar::<i16>(
            &mut c,
            "SELECT CAST(v AS smallint) FROM dbo.bin WHERE id = 6"
        )
        .await,
        Some(-1)
    );
    assert_eq!(
        scalar::<u8>(
            &mut c,
            "SELECT CAST(SUBSTRING(v, 2, 1) AS tinyint) FROM dbo.bin WHERE id = 5"
        )
        .await,
        Some(255)
    );
    assert_eq!(
        scalar::<i32>(
            &mut c,
            "SELECT CAST(SUBSTRING(v, 1, 1) AS int) FROM dbo.bin WHERE id = 5"
        )
        .await,
        Some(21)
    );
}

/// A NULL parameter has the type `sp_executesql`'s @params declares for it
/// ("sp_executesql (Transact-SQL)"), wherever it is used: `@P1 IS NULL`
/// in a CASE needs no other context.
#[tokio::test]
async fn a_null_parameter_has_its_declared_type() {
    let s = standin().await;
    let mut c = connect(&s).await;
    let none: Option<&str> = None;
    let row = c
        .query(
            "SELECT CASE WHEN @P1 IS NULL THEN 1 ELSE 0 END, CASE WHEN @P2 IS NULL THEN 1 ELSE 0 END",
            &[&none, &"x"],
        )
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.get::<i32, _>(0), row.get::<i32, _>(1)),
        (Some(1), Some(0))
    );
}

/// The shape of a bulk chunk: rows bulk loaded into a #temp staging table,
/// then one `INSERT … SELECT … ORDER BY` into a table with an IDENTITY and
/// a trigger, its keys through `OUTPUT INSERTED … INTO` a #temp table.
/// SQL Server computes identity values in the ORDER BY's order ("ORDER BY
/// Clause (Transact-SQL)": "INSERT queries that use SELECT with ORDER BY
/// to populate rows guarantees how identity values are computed"), so the
/// n-th smallest key is the n-th row's.
#[tokio::test]
async fn staged_rows_insert_in_order_with_keys_through_output_into() {
    let s = standin().await;
    let mut c = connect(&s).await;
    exec(
        &mut c,
        "CREATE TABLE dbo.Goods (Id bigint IDENTITY(100,1) NOT NULL PRIMARY KEY, Name nvarchar(20) NOT NULL, \
         Price decimal(9,2) NULL, Flag bit NOT NULL DEFAULT 0)",
    )
    .await;
    exec(&mut c, "CREATE TABLE dbo.GoodsLog (Id bigint NULL)").await;
    exec(
        &mut c,
        "CREATE TRIGGER dbo.Goods_Log ON dbo.Goods AFTER INSERT AS INSERT INTO dbo.GoodsLog (Id) SELECT Id FROM inserted",
    )
    .await;
    exec(&mut c, "BEGIN TRANSACTION").await;
    exec(
        &mut c,
        "CREATE TABLE #stage (c0 nvarchar(20) NULL, c1 decimal(9,2) NULL, c2 bit NULL, ord int NOT NULL)",
    )
    .await;
    let mut req = c.bulk_insert("#stage").await.expect("bulk insert");
    // Sent out of name order: the ORDER BY decides.
    for (ord, name) in [(2, "c"), (0, "a"), (1, "b"), (3, "d")] {
        let mut row = tiberius::TokenRow::new();
        row.push(tiberius::ColumnData::String(Some(name.into())));
        row.push(tiberius::ColumnData::Numeric(Some(
            tiberius::numeric::Numeric::new_with_scale(150 + ord as i128, 2),
        )));
        row.push(tiberius::ColumnData::Bit(Some(ord % 2 == 1)));
        row.push(tiberius::ColumnData::I32(Some(ord)));
        req.send(row).await.unwrap();
    }
    assert_eq!(req.finalize().await.unwrap().total(), 4);
    let keys: Vec<i64> = rows(
        &mut c,
        "CREATE TABLE #keys (k bigint); \
         INSERT INTO dbo.Goods (Name, Price, Flag) OUTPUT INSERTED.Id INTO #keys (k) \
         SELECT c0, c1, c2 FROM #stage ORDER BY ord; \
         SELECT k FROM #keys ORDER BY k",
    )
    .await
    .iter()
    .map(|r| r.get::<i64, _>(0).unwrap())
    .collect();
    exec(&mut c, "COMMIT TRANSACTION").await;
    assert_eq!(keys, [100, 101, 102, 103]);
    let stored: Vec<(i64, String, bool)> =
        rows(&mut c, "SELECT Id, Name, Flag FROM dbo.Goods ORDER BY Id")
            .await
            .iter()
            .map(|r| {
                (
                    r.get::<i64, _>(0).unwrap(),
                    r.get::<&str, _>(1).unwrap().to_string(),
                    r.get::<bool, _>(2).unwrap(),
                )
            })
            .collect();
    assert_eq!(
        stored,
        [
            (100, "a".to_string(), false),
            (101, "b".to_string(), true),
            (102, "c".to_string(), false),
            (103, "d".to_string(), true)
        ]
    );
    assert_eq!(
        scalar::<i32>(&mut c, "SELECT COUNT(*) FROM dbo.GoodsLog").await,
        Some(4),
        "the trigger ran for the set-based insert"
    );
}
