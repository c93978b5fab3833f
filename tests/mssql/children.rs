//! Phones, e-mails and addresses with the Sage CRM on SQL Server: read
//! through the link tables, a child's own change carried across, ERP values
//! written into the child and link rows, with ids from IDENTITY or from
//! `eware_get_identity_id`.

use super::{exec, scalar_i64, Ids, MsEnv, Server};
use crate::common::WORLDWIDE;
use std::collections::BTreeMap;

const FIELDS: &str = r#"
[[entity.field]]
crm = "Comp_Name"
external = "name"

[[entity.field]]
crm = "Phone[Business].Phon_Number"
external = "phone"

[[entity.field]]
crm = "Email[Business].Emai_EmailAddress"
external = "email"

[[entity.field]]
crm = "Address[primary].Addr_City"
external = "city"
"#;

/// The keys of the child and link tables, without IDENTITY when the ids
/// come from `eware_get_identity_id`.
const CHILD_KEYS: [&str; 6] = [
    "Phon_PhoneId",
    "PLink_LinkID",
    "Emai_EmailId",
    "ELink_LinkID",
    "Addr_AddressId",
    "AdLi_AddressLinkId",
];

async fn env(ids: Ids) -> MsEnv {
    let server = Server::start().await;
    let env = MsEnv::with_schema(server, ids, move |schema| {
        if ids == Ids::Identity {
            return schema;
        }
        let mut s = schema;
        for key in CHILD_KEYS {
            let identity = format!("{key:<24}int IDENTITY(1,1) NOT NULL PRIMARY KEY");
            assert!(s.contains(&identity), "crm_schema.sql changed: {identity}");
            s = s.replace(&identity, &format!("{key} int NOT NULL PRIMARY KEY"));
        }
        s
    })
    .await;
    env.write_config(
        50,
        "direction = \"both\"\ndelete_into_external = \"soft\"\nconflict = \"crm_wins\"",
        "id_strategy = \"auto\"",
        "external",
    );
    let text = std::fs::read_to_string(&env.config).unwrap();
    let head = &text[..text.find("[[entity.field]]").unwrap()];
    std::fs::write(&env.config, format!("{head}{FIELDS}")).unwrap();
    env
}

/// Runs an INSERT and returns the largest `key` of `table` after it (the
/// row just inserted: the test is the only writer).
async fn insert(env: &mut MsEnv, sql: &str, table: &str, key: &str) -> i64 {
    exec(&mut env.crm, sql).await;
    scalar_i64(&mut env.crm, &format!("SELECT MAX({key}) FROM dbo.{table}"))
        .await
        .unwrap()
}

/// The next id of `table` in eware_get_identity_id's SQL_Identity.
async fn allocate(env: &mut MsEnv, table: &str) -> i64 {
    let id = scalar_i64(
        &mut env.crm,
        &format!(
            "SELECT i.Id_NextId FROM dbo.SQL_Identity i \
             JOIN dbo.Custom_Tables t ON t.Bord_TableId = i.Id_TableId WHERE t.Bord_Name = N'{table}'"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut env.crm,
        &format!(
            "UPDATE dbo.SQL_Identity SET Id_NextId = Id_NextId + 1 WHERE Id_TableId = \
             (SELECT Bord_TableId FROM dbo.Custom_Tables WHERE Bord_Name = N'{table}')"
        ),
    )
    .await;
    id
}

/// A child row and its link, as Sage CRM writes them.
async fn child(env: &mut MsEnv, ids: Ids, kind: &str, company: i64, code: &str, value: &str) {
    let (table, key, col, link, lkey, cols) = match kind {
        "phone" => (
            "Phone",
            "Phon_PhoneId",
            "Phon_Number",
            "PhoneLink",
            "PLink_LinkID",
            "PLink_EntityID, PLink_RecordID, PLink_Type, PLink_PhoneId, PLink_CreatedDate, PLink_UpdatedDate",
        ),
        _ => (
            "Email",
            "Emai_EmailId",
            "Emai_EmailAddress",
            "EmailLink",
            "ELink_LinkID",
            "ELink_EntityID, ELink_RecordID, ELink_Type, ELink_EmailId, ELink_CreatedDate, ELink_UpdatedDate",
        ),
    };
    let prefix = &key[..5];
    let id = if ids == Ids::Identity {
        insert(
            env,
            &format!(
                "INSERT INTO dbo.{table} ({col}, {prefix}CreatedDate, {prefix}UpdatedDate) \
                 VALUES (N'{value}', GETDATE(), GETDATE())"
            ),
            table,
            key,
        )
        .await
    } else {
        let id = allocate(env, table).await;
        exec(
            &mut env.crm,
            &format!(
                "INSERT INTO dbo.{table} ({key}, {col}, {prefix}CreatedDate, {prefix}UpdatedDate) \
                 VALUES ({id}, N'{value}', GETDATE(), GETDATE())"
            ),
        )
        .await;
        id
    };
    let values = format!("5, {company}, N'{code}', {id}, GETDATE(), GETDATE()");
    if ids == Ids::Identity {
        exec(
            &mut env.crm,
            &format!("INSERT INTO dbo.{link} ({cols}) VALUES ({values})"),
        )
        .await;
    } else {
        let lid = allocate(env, link).await;
        exec(
            &mut env.crm,
            &format!("INSERT INTO dbo.{link} ({lkey}, {cols}) VALUES ({lid}, {values})"),
        )
        .await;
    }
}

/// 20 suppliers: a Business phone each, a Fax for every 4th, an e-mail
/// for the even ones, a primary address each. Returns their ids by i.
async fn seed(env: &mut MsEnv, ids: Ids) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    for i in 1..=20i64 {
        let (key_col, key) = match ids {
            Ids::Identity => ("", String::new()),
            Ids::StoredProcedure => (
                "Comp_CompanyId, ",
                format!("{}, ", allocate(env, "Company").await),
            ),
        };
        let c = insert(
            env,
            &format!(
                "INSERT INTO dbo.Company ({key_col}Comp_Name, Comp_Type, Comp_CreatedBy, \
                 Comp_CreatedDate, Comp_UpdatedBy, Comp_UpdatedDate, Comp_TimeStamp, Comp_SecTerr) \
                 VALUES ({key}N'Company {i}', N'Supplier', 1, GETDATE(), 1, GETDATE(), GETDATE(), \
                 {WORLDWIDE})"
            ),
            "Company",
            "Comp_CompanyId",
        )
        .await;
        out.insert(i, c);
        if i % 4 == 0 {
            child(env, ids, "phone", c, "Fax", &format!("fax {i}")).await;
        }
        child(
            env,
            ids,
            "phone",
            c,
            "Business",
            &format!("+44 20 7946 {i}"),
        )
        .await;
        if i % 2 == 0 {
            child(
                env,
                ids,
                "email",
                c,
                "Business",
                &format!("c{i}@example.com"),
            )
            .await;
        }
        let a = if ids == Ids::Identity {
            insert(
                env,
                &format!(
                    "INSERT INTO dbo.Address (Addr_City, Addr_CreatedDate, Addr_UpdatedDate) \
                     VALUES (N'City {i}', GETDATE(), GETDATE())"
                ),
                "Address",
                "Addr_AddressId",
            )
            .await
        } else {
            let a = allocate(env, "Address").await;
            exec(
                &mut env.crm,
                &format!(
                    "INSERT INTO dbo.Address (Addr_AddressId, Addr_City, Addr_CreatedDate, \
                     Addr_UpdatedDate) VALUES ({a}, N'City {i}', GETDATE(), GETDATE())"
                ),
            )
            .await;
            a
        };
        let link_key = if ids == Ids::Identity {
            String::new()
        } else {
            format!("{}, ", allocate(env, "Address_Link").await)
        };
        let link_col = if ids == Ids::Identity {
            ""
        } else {
            "AdLi_AddressLinkId, "
        };
        exec(
            &mut env.crm,
            &format!(
                "INSERT INTO dbo.Address_Link ({link_col}AdLi_AddressId, AdLi_CompanyID, \
                 AdLi_CreatedDate, AdLi_UpdatedDate) VALUES ({link_key}{a}, {c}, GETDATE(), GETDATE())"
            ),
        )
        .await;
        exec(
            &mut env.crm,
            &format!(
                "UPDATE dbo.Company SET Comp_PrimaryAddressId = {a} WHERE Comp_CompanyId = {c}"
            ),
        )
        .await;
    }
    out
}

type Row = (String, Option<String>, Option<String>, Option<String>);

async fn erp_rows(env: &MsEnv) -> BTreeMap<i64, Row> {
    env.erp
        .query(
            "SELECT crm_company_id::bigint, name, phone, email, city FROM erp.supplier \
             WHERE NOT is_deleted",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect()
}

async fn both_ways(ids: Ids) {
    let mut env = env(ids).await;
    let c = seed(&mut env, ids).await;
    let first = env.sync().await;
    assert_eq!((first.inserted, first.rejected), (20, 0), "{first:?}");
    let rows = erp_rows(&env).await;
    for (i, id) in &c {
        let want = (
            format!("Company {i}"),
            Some(format!("+44 20 7946 {i}")),
            (i % 2 == 0).then(|| format!("c{i}@example.com")),
            Some(format!("City {i}")),
        );
        assert_eq!(rows[id], want, "Company {i}");
    }

    // A phone changed in CRM, its company untouched.
    exec(
        &mut env.crm,
        "UPDATE dbo.Phone SET Phon_Number = N'+44 1632 960002', Phon_UpdatedDate = GETDATE() \
         WHERE Phon_Number = N'+44 20 7946 2'",
    )
    .await;
    let second = env.sync().await;
    assert_eq!(second.updated, 1, "{second:?}");
    assert_eq!(
        erp_rows(&env).await[&c[&2]].1.as_deref(),
        Some("+44 1632 960002")
    );

    let phones = scalar_i64(&mut env.crm, "SELECT COUNT(*) FROM dbo.Phone").await;
    let phone1 = scalar_i64(
        &mut env.crm,
        "SELECT Phon_PhoneId FROM dbo.Phone WHERE Phon_Number = N'+44 20 7946 1'",
    )
    .await
    .unwrap();
    env.erp
        .batch_execute(&format!(
            "UPDATE erp.supplier SET phone = '+44 113 496 0001' WHERE crm_company_id = {};
             UPDATE erp.supplier SET email = 'three@example.com' WHERE crm_company_id = {};
             UPDATE erp.supplier SET phone = NULL WHERE crm_company_id = {};
             UPDATE erp.supplier SET city = NULL WHERE crm_company_id = {};
             INSERT INTO erp.supplier (name, phone, email, city)
             VALUES ('Northwind', '+44 161 496 0000', 'orders@northwind.example', 'Manchester');",
            c[&1], c[&3], c[&6], c[&7]
        ))
        .await
        .unwrap();
    let third = env.sync().await;
    assert_eq!(
        (third.crm_updated, third.crm_inserted, third.rejected),
        (4, 1, 0),
        "{third:?}"
    );
    // In place.
    assert_eq!(
        scalar_i64(
            &mut env.crm,
            "SELECT Phon_PhoneId FROM dbo.Phone WHERE Phon_Number = N'+44 113 496 0001'",
        )
        .await,
        Some(phone1)
    );
    // A new Email with its EmailLink, by Sage's rules.
    let email = scalar_i64(
        &mut env.crm,
        &format!(
            "SELECT COUNT(*) FROM dbo.EmailLink l JOIN dbo.Email e ON e.Emai_EmailId = l.ELink_EmailId \
             WHERE l.ELink_RecordID = {} AND l.ELink_EntityID = 5 AND l.ELink_Type = N'Business' \
               AND e.Emai_EmailAddress = N'three@example.com' AND e.Emai_CreatedBy = 1 \
               AND e.Emai_CreatedDate IS NOT NULL AND e.Emai_TimeStamp IS NOT NULL \
               AND l.ELink_CreatedBy = 1 AND l.ELink_Deleted IS NULL AND e.Emai_Deleted IS NULL",
            c[&3]
        ),
    )
    .await;
    assert_eq!(email, Some(1));
    // Ended by soft deletes only.
    let ended = scalar_i64(
        &mut env.crm,
        &format!(
            "SELECT COUNT(*) FROM dbo.PhoneLink l JOIN dbo.Phone p ON p.Phon_PhoneId = l.PLink_PhoneId \
             WHERE l.PLink_RecordID = {} AND l.PLink_Type = N'Business' \
               AND l.PLink_Deleted = 1 AND p.Phon_Deleted = 1",
            c[&6]
        ),
    )
    .await;
    assert_eq!(ended, Some(1));
    // A cleared city ends the primary address: link and address
    // soft-deleted, Comp_PrimaryAddressId emptied.
    let ended = scalar_i64(
        &mut env.crm,
        &format!(
            "SELECT COUNT(*) FROM dbo.Address_Link l JOIN dbo.Address a ON a.Addr_AddressId = l.AdLi_AddressId \
             JOIN dbo.Company c ON c.Comp_CompanyId = l.AdLi_CompanyID \
             WHERE c.Comp_CompanyId = {} AND l.AdLi_Deleted = 1 AND a.Addr_Deleted = 1 \
               AND c.Comp_PrimaryAddressId IS NULL",
            c[&7]
        ),
    )
    .await;
    assert_eq!(ended, Some(1));
    // The new supplier: a company, its phone, e-mail and primary address.
    let new = scalar_i64(
        &mut env.crm,
        "SELECT COUNT(*) FROM dbo.Company c \
         JOIN dbo.Address a ON a.Addr_AddressId = c.Comp_PrimaryAddressId \
         JOIN dbo.Address_Link al ON al.AdLi_AddressId = a.Addr_AddressId AND al.AdLi_CompanyID = c.Comp_CompanyId \
         JOIN dbo.PhoneLink pl ON pl.PLink_RecordID = c.Comp_CompanyId AND pl.PLink_EntityID = 5 \
         JOIN dbo.Phone p ON p.Phon_PhoneId = pl.PLink_PhoneId \
         JOIN dbo.EmailLink el ON el.ELink_RecordID = c.Comp_CompanyId AND el.ELink_EntityID = 5 \
         JOIN dbo.Email e ON e.Emai_EmailId = el.ELink_EmailId \
         WHERE c.Comp_Name = N'Northwind' AND a.Addr_City = N'Manchester' \
           AND p.Phon_Number = N'+44 161 496 0000' AND e.Emai_EmailAddress = N'orders@northwind.example'",
    )
    .await;
    assert_eq!(new, Some(1));
    let phones_after = scalar_i64(&mut env.crm, "SELECT COUNT(*) FROM dbo.Phone").await;
    assert_eq!(
        phones_after,
        phones.map(|n| n + 1),
        "one phone added (Northwind's), none removed"
    );
    if ids == Ids::StoredProcedure {
        // Every Phone and PhoneLink id came from eware_get_identity_id.
        for (id, table) in [(120, "Phone"), (121, "PhoneLink")] {
            let next = scalar_i64(
                &mut env.crm,
                &format!("SELECT Id_NextId FROM dbo.SQL_Identity WHERE Id_TableId = {id}"),
            )
            .await;
            let max = scalar_i64(
                &mut env.crm,
                &format!("SELECT MAX(1) + COUNT(*) FROM dbo.{table}"),
            )
            .await;
            assert_eq!(
                next, max,
                "{table} ids were allocated by eware_get_identity_id"
            );
        }
    }
    // Quiet from here on, both ways.
    for _ in 0..2 {
        let quiet = env.sync().await;
        assert_eq!(quiet.changes(), 0, "{quiet:?}");
    }
}

#[tokio::test]
async fn child_values_both_ways_with_identity_ids_on_sql_server() {
    both_ways(Ids::Identity).await;
}

#[tokio::test]
async fn child_values_both_ways_with_eware_get_identity_id_on_sql_server() {
    both_ways(Ids::StoredProcedure).await;
}
