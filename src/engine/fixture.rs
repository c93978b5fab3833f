//! An entity bound to an in-memory catalog, for unit tests of the engine's
//! pure logic (the merge, the window) that need no database: the plan is
//! built from config text as `crmsync` builds it, and every column it names
//! gets a plain type (keys int, change columns timestamp, the rest text).

use crate::config;
use crate::db::{ColumnInfo, TableInfo};
use crate::plan::{EntityPlan, PerSide, Plan};
use crate::schema::{BoundEntity, BoundField, BoundSide, CrmSystem};
use crate::value::{LengthUnit, SqlType, Zones};
use std::path::Path;
use std::sync::Arc;

/// The connections and the head of an entity; `entity` appends its
/// options and fields.
const HEAD: &str = r#"
[crm]
url = "postgres://sync@crm/crm"
user_id = 1
timezone = "UTC"
[external]
url = "postgres://sync@erp/erp"
timezone = "UTC"
[[entity]]
name = "supplier"
crm_table = "Company"
crm_link_column = "comp_supplierid"
external_table = "erp.supplier"
external_key = "supplier_id"
external_updated_column = "updated_at"
"#;

/// The plan of one entity: `HEAD` plus `rest` (entity keys, then
/// `[[entity.field]]` tables).
pub(super) fn plan(rest: &str) -> Plan {
    let text = format!("{HEAD}{rest}");
    let raw = config::parse(Path::new("crmsync.toml"), &text).expect("config parses");
    Plan::build(Path::new("crmsync.toml"), raw).expect("config is valid")
}

fn column(name: &str, ty: SqlType) -> ColumnInfo {
    ColumnInfo {
        name: name.to_string(),
        ty,
        nullable: true,
        has_default: false,
        identity: false,
        generated: false,
    }
}

fn text(name: &str) -> ColumnInfo {
    let ty = SqlType::Text {
        max_len: None,
        unit: LengthUnit::Chars,
        fixed: false,
    };
    column(name, ty)
}

fn table(name: &str, columns: Vec<ColumnInfo>) -> Arc<TableInfo> {
    Arc::new(TableInfo {
        schema: "public".into(),
        name: name.into(),
        primary_key: vec![columns[0].name.clone()],
        columns,
        indexes: Vec::new(),
        unique: Vec::new(),
        row_estimate: 0,
    })
}

/// The entity of `plan(rest)` bound to an in-memory catalog.
pub(super) fn entity(rest: &str) -> BoundEntity {
    let plan = plan(rest);
    let p: EntityPlan = plan.entities[0].clone();
    let int = SqlType::Int { bytes: 4 };
    let ts = SqlType::Timestamp { precision: 3 };
    let crm_key = column(p.crm_key.as_deref().unwrap_or("key"), int.clone());
    let crm_change = column(&p.crm_updated_column, ts.clone());
    let crm_deleted = column(&p.crm_deleted_column, int.clone());
    let crm_link = p.crm_link_column.as_deref().map(text);
    let ext_key = column(&p.external_key, int.clone());
    let ext_change = column(&p.external_updated_column, ts);
    let fields: Vec<BoundField> = p
        .fields
        .iter()
        .map(|f| BoundField {
            name: f.crm.to_lowercase(),
            crm: text(&f.crm),
            external: text(&f.external),
            plan: f.clone(),
            deferrable: false,
        })
        .collect();
    let mut crm_cols = vec![crm_key.clone(), crm_change.clone(), crm_deleted.clone()];
    crm_cols.extend(crm_link.clone());
    crm_cols.extend(fields.iter().map(|f| f.crm.clone()));
    let mut ext_cols = vec![ext_key.clone(), ext_change.clone()];
    ext_cols.extend(fields.iter().map(|f| f.external.clone()));
    let zones = Zones {
        from: plan.crm.timezone,
        to: plan.external.timezone,
    };
    BoundEntity {
        side: PerSide::new(
            BoundSide {
                table: table(&p.crm_table.name, crm_cols),
                key: crm_key,
                change: crm_change,
                deleted: Some(crm_deleted),
                defaults: Vec::new(),
            },
            BoundSide {
                table: table(&p.external_table.name, ext_cols),
                key: ext_key,
                change: ext_change,
                deleted: None,
                defaults: Vec::new(),
            },
        ),
        crm_link,
        crm_system: CrmSystem::default(),
        external_crm_id: None,
        fields,
        cycle: None,
        crm_children: Vec::new(),
        to_external: zones,
        to_crm: Zones {
            from: zones.to,
            to: zones.from,
        },
        plan: p,
    }
}
