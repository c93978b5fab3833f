//! Related records with the Sage CRM on SQL Server.

use super::{exec, scalar_i64, Ids, MsEnv};
use crate::common::WORLDWIDE;
use crate::references::CONTACT_ENTITY;
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
