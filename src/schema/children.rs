//! Binds an entity's phone, e-mail and address fields
//! (`Phone[Business].Phon_Number`) to the live CRM catalog: the child and
//! link tables, the mapped columns, the entity id and type code a link row
//! holds, how new rows get their ids, and the indexes the child reads need.

use super::{lookup_column, lookup_table, Findings};
use crate::crm::{ChildKind, SystemColumns};
use crate::endpoint::children::{Child, ChildColumn, LinkCond, System};
use crate::endpoint::{ColumnInfo, Endpoint, EndpointError, Scan, TableInfo};
use crate::plan::{ChildSelector, EntityPlan, IdStrategy, Plan};
use crate::value::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// A child field bound: its CRM column (named like the field, typed like
/// the child table's column) and what the scan reads it through.
pub(super) struct BoundChild {
    pub(super) column: ColumnInfo,
    pub(super) read: ChildColumn,
}

/// The fields of one child: its kind and selector, and each field's index
/// with its column in the child table.
type Group = (ChildKind, ChildSelector, Vec<(usize, ColumnInfo)>);

/// The system columns of a child or link table with prefix `prefix`;
/// `None` (and an error) without an UpdatedDate or Deleted column.
fn system(f: &mut Findings, at: &str, t: &TableInfo, prefix: &str) -> Option<System> {
    let sys = SystemColumns::for_prefix(prefix);
    let opt = |n: &str| t.column(n).ok().map(|c| c.name.clone());
    let (Some(updated_date), Some(deleted)) = (opt(&sys.updated_date), opt(&sys.deleted)) else {
        f.errors.push(format!(
            "{at}: {} has no {} or {} column; Sage CRM's child tables carry both",
            t.qualified(),
            sys.updated_date,
            sys.deleted
        ));
        return None;
    };
    Some(System {
        created_by: opt(&sys.created_by),
        created_date: opt(&sys.created_date),
        updated_by: opt(&sys.updated_by),
        updated_date,
        timestamp: opt(&sys.timestamp),
        deleted,
        secterr: opt(&sys.secterr),
    })
}

/// Warns when no index of `t` leads with one of the column lists
/// `accept`, printing the index `suggest` to add.
fn want_index(f: &mut Findings, at: &str, t: &TableInfo, accept: &[&[&str]], why: &str) {
    let leads = |want: &[&str]| {
        t.indexes.iter().any(|ix| {
            ix.len() >= want.len()
                && ix
                    .iter()
                    .zip(want)
                    .all(|(have, want)| have.eq_ignore_ascii_case(want))
        })
    };
    if accept.iter().any(|want| leads(want)) {
        return;
    }
    let suggest = accept.last().copied().unwrap_or_default();
    f.warnings.push(format!(
        "{at}: no index on {} starts with {}; {why}. Add one: CREATE INDEX ON {} ({})",
        t.qualified(),
        suggest.join(", "),
        t.qualified(),
        suggest.join(", ")
    ));
}

/// The `Custom_Tables.Bord_TableId` of `table`, or Sage CRM's standard id
/// when the database has no `Custom_Tables` (or no row for it).
async fn entity_id(
    crm: &dyn Endpoint,
    schema: Option<&str>,
    table: &str,
) -> Result<Option<i64>, EndpointError> {
    let standard = crate::crm::default_entity_id(table);
    let Some(canonical) = crate::crm::known_table(table).map(|k| k.table) else {
        return Ok(standard);
    };
    let Some(t) = crm.table(schema, "Custom_Tables").await? else {
        return Ok(standard);
    };
    let (Ok(id), Ok(name)) = (t.column("Bord_TableId"), t.column("Bord_Name")) else {
        return Ok(standard);
    };
    let scan = Scan {
        columns: vec![id.name.clone()],
        key: id.name.clone(),
        change: id.name.clone(),
        change_ty: id.ty.clone(),
        filter: None,
        children: Vec::new(),
        table: Arc::new(t.clone()),
    };
    let rows = crm
        .find(
            &scan,
            &[(name.name.clone(), Value::Text(canonical.to_string()))],
            2,
        )
        .await?;
    Ok(match rows.as_slice() {
        [one] => match one.first() {
            Some(Value::Int(i)) => Some(*i),
            Some(Value::Decimal(d)) => i64::try_from(d.trunc()).ok().or(standard),
            _ => standard,
        },
        _ => standard,
    })
}

/// Whether new rows of `t` (keyed by `key`) take ids from
/// `eware_get_identity_id` rather than an IDENTITY.
fn allocates(strategy: IdStrategy, key: &ColumnInfo) -> bool {
    match strategy {
        IdStrategy::Auto => !(key.identity || key.has_default),
        IdStrategy::Identity => false,
        IdStrategy::StoredProcedure => true,
    }
}

/// Binds the child fields of `e` (CRM table `parent`, key `parent_key`);
/// the result is by field index. Problems go to `f`.
pub(super) async fn bind(
    plan: &Plan,
    e: &EntityPlan,
    crm: &dyn Endpoint,
    parent: &TableInfo,
    parent_key: Option<&ColumnInfo>,
    f: &mut Findings,
) -> Result<HashMap<usize, BoundChild>, EndpointError> {
    let mut out = HashMap::new();
    let at = format!("entity {:?}", e.name);
    let fields: Vec<(usize, &crate::plan::ChildRef)> = e
        .fields
        .iter()
        .enumerate()
        .filter_map(|(i, fp)| fp.child.as_ref().map(|c| (i, c)))
        .collect();
    let Some(parent_key) = parent_key else {
        return Ok(out);
    };
    if fields.is_empty() {
        return Ok(out);
    }
    let person = parent.name.eq_ignore_ascii_case("Person");
    let parent_arc = Arc::new(parent.clone());
    let mut tables: HashMap<&'static str, Option<(TableInfo, TableInfo)>> = HashMap::new();
    let mut eid: Option<Option<i64>> = None;
    // One child per table and selector, holding the columns mapped from it.
    let mut groups: Vec<Group> = Vec::new();
    for (i, r) in &fields {
        let fat = format!("{at}: field {} ({})", i + 1, e.fields[*i].crm);
        let ct = r.table;
        if !tables.contains_key(ct.table) {
            // Sage CRM's tables share one schema: the entity's.
            let schema = e.crm_table.schema.as_deref();
            let child = lookup_table(f, &fat, "CRM", crm, "crm", schema, ct.table).await?;
            let link = lookup_table(f, &fat, "CRM", crm, "crm", schema, ct.link_table).await?;
            tables.insert(ct.table, child.zip(link));
        }
        let Some((child_t, _)) = &tables[ct.table] else {
            continue;
        };
        let Some(col) = lookup_column(f, &fat, "CRM", child_t, "crm", &r.column) else {
            continue;
        };
        let sys = SystemColumns::for_prefix(ct.prefix);
        let system_cols = [
            ct.key,
            &sys.created_by,
            &sys.created_date,
            &sys.updated_by,
            &sys.updated_date,
            &sys.timestamp,
            &sys.deleted,
            &sys.secterr,
        ];
        if system_cols
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&col.name))
        {
            f.errors.push(format!(
                "{fat}: {} is kept by Sage CRM's rules, not a value to map; map a column such as {}",
                col.name,
                match ct.kind {
                    ChildKind::Phone => "Phon_Number",
                    ChildKind::Email => "Emai_EmailAddress",
                    ChildKind::Address => "Addr_City",
                }
            ));
            continue;
        }
        match groups
            .iter_mut()
            .find(|(k, s, _)| *k == ct.kind && *s == r.selector)
        {
            Some((_, _, cols)) => cols.push((*i, col)),
            None => groups.push((ct.kind, r.selector.clone(), vec![(*i, col)])),
        }
    }
    for (kind, selector, cols) in groups {
        let ct = crate::crm::CHILD_TABLES
            .iter()
            .find(|c| c.kind == kind)
            .expect("every kind has a table");
        let Some((child_t, link_t)) = tables[ct.table].clone() else {
            continue;
        };
        let label = match &selector {
            ChildSelector::Type(code) => format!("{}[{code}]", ct.table),
            ChildSelector::Primary => format!("{}[{}]", ct.table, crate::crm::PRIMARY),
        };
        let gat = format!("{at}: {label}");
        let (Some(system), Some(link_system)) = (
            system(f, &gat, &child_t, ct.prefix),
            system(f, &gat, &link_t, ct.link_prefix),
        ) else {
            continue;
        };
        let need = |f: &mut Findings, t: &TableInfo, name: &str| {
            lookup_column(f, &gat, "CRM", t, "crm", name).map(|c| c.name)
        };
        let (Some(key), Some(link_key), Some(link_child)) = (
            need(f, &child_t, ct.key),
            need(f, &link_t, ct.link_key),
            need(f, &link_t, ct.link_child),
        ) else {
            continue;
        };
        let mut link_conds = Vec::new();
        let mut link_copy = None;
        // The index a lookup of the entity's links wants: Sage CRM's own
        // (EntityID, RecordID, Type) on the phone and e-mail links.
        let mut lookup_index: Vec<String> = Vec::new();
        let record = match kind {
            ChildKind::Phone | ChildKind::Email => {
                let lp = ct.link_prefix;
                let (Some(entity), Some(record)) = (
                    need(f, &link_t, &format!("{lp}EntityID")),
                    need(f, &link_t, &format!("{lp}RecordID")),
                ) else {
                    continue;
                };
                if eid.is_none() {
                    eid = Some(entity_id(crm, e.crm_table.schema.as_deref(), &parent.name).await?);
                }
                let Some(id) = eid.flatten() else {
                    f.errors.push(format!(
                        "{gat}: no entity id for {} in Custom_Tables; phones and e-mails belong to \
                         Company and Person rows",
                        parent.name
                    ));
                    continue;
                };
                lookup_index = vec![entity.clone(), record.clone()];
                link_conds.push(LinkCond::Eq(entity, Value::Int(id)));
                record
            }
            ChildKind::Address => {
                let (Some(company), Some(person_col)) = (
                    need(f, &link_t, "AdLi_CompanyID"),
                    need(f, &link_t, "AdLi_PersonID"),
                ) else {
                    continue;
                };
                if person {
                    let company_of = format!("{}CompanyId", e.crm_prefix);
                    link_copy = parent
                        .column(&company_of)
                        .ok()
                        .map(|c| (company, c.name.clone()));
                    person_col
                } else {
                    // A company's own addresses name no person.
                    link_conds.push(LinkCond::IsNull(person_col));
                    company
                }
            }
        };
        if let ChildSelector::Type(code) = &selector {
            let Some(tc) = need(f, &link_t, ct.link_type) else {
                continue;
            };
            if !lookup_index.is_empty() {
                lookup_index.push(tc.clone());
            }
            link_conds.push(LinkCond::Eq(tc, Value::Text(code.clone())));
        }
        if lookup_index.is_empty() {
            lookup_index.push(record.clone());
        }
        let primary = match kind {
            ChildKind::Address => {
                let name = format!("{}PrimaryAddressId", e.crm_prefix);
                match parent.column(&name) {
                    Ok(c) => Some(c.name.clone()),
                    Err(_) if selector == ChildSelector::Primary => {
                        f.errors.push(format!(
                            "{gat}: {} has no column {name}, which names the primary address",
                            parent.qualified()
                        ));
                        continue;
                    }
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let lookup: Vec<&str> = lookup_index.iter().map(String::as_str).collect();
        let lookup_prefix = &lookup[..lookup.len().min(2)];
        want_index(
            f,
            &gat,
            &link_t,
            &[&[record.as_str()], lookup_prefix, &lookup],
            "every read of the field looks the entity's links up by it",
        );
        want_index(
            f,
            &gat,
            &link_t,
            &[&[link_child.as_str()]],
            "a changed child row finds its entity through it",
        );
        for (t, s) in [(&link_t, &link_system), (&child_t, &system)] {
            want_index(
                f,
                &gat,
                t,
                &[&[s.updated_date.as_str()]],
                "every incremental run looks for changed rows by it",
            );
        }
        let key_info = child_t.column(&key).ok().cloned();
        let link_key_info = link_t.column(&link_key).ok().cloned();
        let child = Arc::new(Child {
            label: label.clone(),
            table: Arc::new(child_t.clone()),
            key,
            system,
            link: Arc::new(link_t.clone()),
            link_key,
            link_system,
            link_child,
            link_record: record,
            link_conds,
            parent: parent_arc.clone(),
            parent_key: parent_key.name.clone(),
            primary,
            follows_primary: selector == ChildSelector::Primary,
            link_copy,
            columns: cols.iter().map(|(_, c)| c.name.clone()).collect(),
            user_id: plan.crm_user_id,
            secterr: e.secterr,
            allocate: key_info.is_some_and(|k| allocates(plan.id_strategy, &k)),
            link_allocate: link_key_info.is_some_and(|k| allocates(plan.id_strategy, &k)),
        });
        for (i, col) in cols {
            let name = format!("{label}.{}", col.name);
            out.insert(
                i,
                BoundChild {
                    column: ColumnInfo {
                        name: name.clone(),
                        ..col.clone()
                    },
                    read: ChildColumn {
                        name,
                        column: col.name.clone(),
                        child: child.clone(),
                    },
                },
            );
        }
    }
    Ok(out)
}
