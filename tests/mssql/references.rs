//! Related records with the Sage CRM on SQL Server.

use super::{exec, scalar_i64, Ids, MsEnv};
use crate::common::WORLDWIDE;
use crate::references::{CONTACT_ENTITY, PRIMARY_CONTACT};
use crmsync::engine::{Engine, Mode};

/// Related records with the Sage CRM on SQL Server: persons under their
/// companies, ERP contacts under their suppliers (a real foreign key, ERP
/// keys unlike the CRM ids), translated through the supplier links both
/// ways in one run, parents first.
#[tokio::test]
async fn persons_follow_their_companies_with_the_crm_on_sql_server() {
    let mut env = MsEnv::new(Ids::Identity).await;
    env.erp
        .batch_execute("ALTER TABLE erp.supplier ALTER COLUMN supplier_id RESTART WITH 5000;")
        .await
        .unwrap();
    env.write_config(
        50,
        "direction = \"both\"\ndelete_into_external = \"ignore\"\ndelete_into_crm = \"ignore\"",
        "",
        "external",
    );
    let supplier = std::fs::read_to_string(&env.config).unwrap();
    let (head, entity) = supplier.split_at(supplier.find("[[entity]]").unwrap());
    std::fs::write(&env.config, format!("{head}{CONTACT_ENTITY}\n{entity}")).unwrap();
    let company = |name: &str, kind: &str| {
        format!(
            "INSERT INTO dbo.Company (Comp_Name, Comp_Type, Comp_CreatedBy, Comp_CreatedDate, \
             Comp_UpdatedBy, Comp_UpdatedDate, Comp_TimeStamp, Comp_SecTerr) \
             VALUES (N'{name}', N'{kind}', 1, GETDATE(), 1, GETDATE(), GETDATE(), {WORLDWIDE})"
        )
    };
    exec(&mut env.crm, &company("Acme", "Supplier")).await;
    exec(&mut env.crm, &company("Initech", "Customer")).await;
    let id_of =
        |name: &str| format!("SELECT Comp_CompanyId FROM dbo.Company WHERE Comp_Name = N'{name}'");
    let acme = scalar_i64(&mut env.crm, &id_of("Acme")).await.unwrap();
    let initech = scalar_i64(&mut env.crm, &id_of("Initech")).await.unwrap();
    for (company, last) in [(acme, "Ann"), (initech, "Cid")] {
        exec(
            &mut env.crm,
            &format!(
                "INSERT INTO dbo.Person (Pers_CompanyId, Pers_LastName, Pers_CreatedBy, \
                 Pers_CreatedDate, Pers_UpdatedBy, Pers_UpdatedDate, Pers_TimeStamp, Pers_SecTerr) \
                 VALUES ({company}, N'{last}', 1, GETDATE(), 1, GETDATE(), GETDATE(), {WORLDWIDE})"
            ),
        )
        .await;
    }
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = Engine::connect(plan).await.expect("connect");
    let first = engine.sync(None, Mode::Apply).await.expect("sync");
    let order: Vec<&str> = first.iter().map(|r| r.entity.as_str()).collect();
    assert_eq!(order, ["supplier", "contact"]);
    assert_eq!(
        (first[1].inserted, first[1].rejected),
        (1, 1),
        "{:?}",
        first[1]
    );
    let acme_erp: i64 = env
        .erp
        .query_one(
            "SELECT supplier_id FROM erp.supplier WHERE crm_company_id = $1",
            &[&(acme as i32)],
        )
        .await
        .unwrap()
        .get(0);
    let ann_supplier: i64 = env
        .erp
        .query_one(
            "SELECT supplier_id FROM erp.contact WHERE last_name = 'Ann'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ann_supplier, acme_erp);
    // An ERP contact under Acme arrives in CRM under Acme's company.
    env.erp
        .execute(
            "INSERT INTO erp.contact (supplier_id, last_name) VALUES ($1, 'Dee')",
            &[&acme_erp],
        )
        .await
        .unwrap();
    let second = engine.sync(None, Mode::Apply).await.expect("sync");
    assert_eq!(second[1].crm_inserted, 1, "{:?}", second[1]);
    assert_eq!(
        scalar_i64(
            &mut env.crm,
            "SELECT Pers_CompanyId FROM dbo.Person WHERE Pers_LastName = N'Dee'"
        )
        .await,
        Some(acme)
    );
}

/// The Sage model's cycle with the CRM on SQL Server: companies name their
/// primary persons and persons their companies; ERP suppliers their
/// primary contacts (NULL allowed) and contacts their suppliers (NOT
/// NULL). One run writes both sides complete, both ways.
#[tokio::test]
async fn a_cycle_of_references_is_complete_after_one_run_with_the_crm_on_sql_server() {
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(
        50,
        "direction = \"both\"\ndelete_into_external = \"ignore\"\ndelete_into_crm = \"ignore\"",
        "",
        "external",
    );
    let supplier = std::fs::read_to_string(&env.config).unwrap();
    let (head, entity) = supplier.split_at(supplier.find("[[entity]]").unwrap());
    std::fs::write(
        &env.config,
        format!("{head}{CONTACT_ENTITY}\n{entity}\n{PRIMARY_CONTACT}"),
    )
    .unwrap();
    let mut primaries = Vec::new();
    for name in ["Acme", "Globex"] {
        exec(
            &mut env.crm,
            &format!(
                "INSERT INTO dbo.Company (Comp_Name, Comp_Type, Comp_CreatedBy, Comp_CreatedDate, \
                 Comp_UpdatedBy, Comp_UpdatedDate, Comp_TimeStamp, Comp_SecTerr) \
                 VALUES (N'{name}', N'Supplier', 1, GETDATE(), 1, GETDATE(), GETDATE(), {WORLDWIDE})"
            ),
        )
        .await;
        let company = scalar_i64(
            &mut env.crm,
            &format!("SELECT Comp_CompanyId FROM dbo.Company WHERE Comp_Name = N'{name}'"),
        )
        .await
        .unwrap();
        for n in 1..=2 {
            exec(
                &mut env.crm,
                &format!(
                    "INSERT INTO dbo.Person (Pers_CompanyId, Pers_LastName, Pers_CreatedBy, \
                     Pers_CreatedDate, Pers_UpdatedBy, Pers_UpdatedDate, Pers_TimeStamp, \
                     Pers_SecTerr) VALUES ({company}, N'{name} {n}', 1, GETDATE(), 1, GETDATE(), \
                     GETDATE(), {WORLDWIDE})"
                ),
            )
            .await;
        }
        let first = scalar_i64(
            &mut env.crm,
            &format!("SELECT Pers_PersonId FROM dbo.Person WHERE Pers_LastName = N'{name} 1'"),
        )
        .await
        .unwrap();
        exec(
            &mut env.crm,
            &format!(
                "UPDATE dbo.Company SET Comp_PrimaryPersonId = {first}, \
                 Comp_UpdatedDate = GETDATE(), Comp_TimeStamp = GETDATE() \
                 WHERE Comp_CompanyId = {company}"
            ),
        )
        .await;
        primaries.push((company as i32, Some(first as i32)));
    }
    // A new ERP supplier with two contacts, the first its primary one.
    let umbrella: i64 = env
        .erp
        .query_one(
            "INSERT INTO erp.supplier (name) VALUES ('Umbrella') RETURNING supplier_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let dee: i64 = env
        .erp
        .query_one(
            "INSERT INTO erp.contact (supplier_id, last_name) VALUES ($1, 'Dee') \
             RETURNING contact_id",
            &[&umbrella],
        )
        .await
        .unwrap()
        .get(0);
    env.erp
        .execute(
            "INSERT INTO erp.contact (supplier_id, last_name) VALUES ($1, 'Eve')",
            &[&umbrella],
        )
        .await
        .unwrap();
    env.erp
        .execute(
            "UPDATE erp.supplier SET primary_contact_id = $1 WHERE supplier_id = $2",
            &[&dee, &umbrella],
        )
        .await
        .unwrap();

    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = Engine::connect(plan).await.expect("connect");
    let first = engine.sync(None, Mode::Apply).await.expect("sync");
    let order: Vec<&str> = first.iter().map(|r| r.entity.as_str()).collect();
    assert_eq!(order, ["supplier", "contact"]);
    for r in &first {
        assert_eq!(r.open_rejects, 0, "{r:?}");
    }
    let erp: Vec<(i32, Option<i32>)> = env
        .erp
        .query(
            "SELECT s.crm_company_id, c.crm_person_id FROM erp.supplier s \
             LEFT JOIN erp.contact c ON c.contact_id = s.primary_contact_id \
             WHERE s.supplier_id <> $1 ORDER BY s.crm_company_id",
            &[&umbrella],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(erp, primaries);
    let umbrella_company = scalar_i64(
        &mut env.crm,
        "SELECT Comp_CompanyId FROM dbo.Company WHERE Comp_Name = N'Umbrella'",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar_i64(
            &mut env.crm,
            "SELECT c.Comp_PrimaryPersonId - p.Pers_PersonId FROM dbo.Company c \
             JOIN dbo.Person p ON p.Pers_LastName = N'Dee' WHERE c.Comp_Name = N'Umbrella'"
        )
        .await,
        Some(0),
        "the new company names its primary person"
    );
    assert_eq!(
        scalar_i64(
            &mut env.crm,
            &format!("SELECT COUNT(*) FROM dbo.Person WHERE Pers_CompanyId = {umbrella_company}")
        )
        .await,
        Some(2)
    );
    let quiet = engine.sync(None, Mode::Apply).await.expect("sync");
    for r in &quiet {
        assert_eq!(r.changes(), 0, "{r:?}");
    }
}
