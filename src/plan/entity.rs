//! Validation of one `[[entity]]` and its `[[entity.field]]`s: names,
//! filters, policies, settings and defaults, into an `EntityPlan`.

use super::build::Collector;
use super::{
    ChildRef, ConflictPolicy, CrmDelete, Direction, EntityPlan, ExternalDelete, FieldPlan,
    OnTruncate, Side, TableRef, Transform,
};
use crate::config::{self, RawEntity, RawField};
use crate::crm;
use crate::value::Value;
use std::collections::BTreeSet;

const DIRECTIONS: [(&str, Direction); 3] = [
    ("crm_to_external", Direction::CrmToExternal),
    ("external_to_crm", Direction::ExternalToCrm),
    ("both", Direction::Both),
];

const TRUNCATE: [(&str, OnTruncate); 3] = [
    ("reject", OnTruncate::Reject),
    ("truncate", OnTruncate::Truncate),
    ("fail", OnTruncate::Fail),
];

pub(super) fn entity(
    c: &mut Collector,
    at: &str,
    e: &RawEntity,
    defaults: &config::RawDefaults,
    state_side: Side,
) -> EntityPlan {
    let crm_table = table_ref(c, at, "crm_table", &e.crm_table);
    let external_table = table_ref(c, at, "external_table", &e.external_table);
    let known = crm::known_table(&crm_table.name);
    let crm_prefix = match (&e.crm_prefix, known) {
        (Some(p), _) => p.clone(),
        (None, Some(k)) => k.prefix.to_string(),
        (None, None) => {
            c.push(
                at,
                format!(
                    "crm_table {:?} is not a standard Sage CRM entity; set crm_prefix (e.g. \"Comp_\") and crm_key",
                    crm_table.name
                ),
            );
            String::new()
        }
    };
    let crm_key = e
        .crm_key
        .clone()
        .or_else(|| known.map(|k| k.key.to_string()));
    let crm_updated_column = e
        .crm_updated_column
        .clone()
        .unwrap_or_else(|| format!("{crm_prefix}UpdatedDate"));
    let crm_deleted_column = format!("{crm_prefix}Deleted");
    for (key, v) in [
        ("crm_prefix", Some(&crm_prefix)),
        ("crm_key", crm_key.as_ref()),
        ("crm_updated_column", Some(&crm_updated_column)),
        ("crm_link_column", e.crm_link_column.as_ref()),
        ("external_key", Some(&e.external_key)),
        ("external_crm_id_column", e.external_crm_id_column.as_ref()),
        ("external_updated_column", Some(&e.external_updated_column)),
        (
            "external_deleted_column",
            e.external_deleted_column.as_ref(),
        ),
    ] {
        if let Some(v) = v {
            if !(key == "crm_prefix" && v.is_empty()) {
                c.identifier(at, key, v);
            }
        }
    }
    c.filter(at, "crm_filter", &e.crm_filter);
    c.filter(at, "external_filter", &e.external_filter);
    let direction = c.choice(
        at,
        "direction",
        e.direction.as_deref(),
        Direction::Both,
        &DIRECTIONS,
    );
    let delete_into_crm = c.choice(
        at,
        "delete_into_crm",
        e.delete_into_crm.as_deref(),
        CrmDelete::Soft,
        &[("soft", CrmDelete::Soft), ("ignore", CrmDelete::Ignore)],
    );
    if e.delete_into_crm.as_deref() == Some("hard") {
        c.problems.pop();
        c.push(
            at,
            "delete_into_crm = \"hard\" is not allowed: Sage CRM rows are only ever soft-deleted (soft | ignore)",
        );
    }
    let delete_into_external = c.choice(
        at,
        "delete_into_external",
        e.delete_into_external.as_deref(),
        ExternalDelete::Hard,
        &[
            ("hard", ExternalDelete::Hard),
            ("soft", ExternalDelete::Soft),
            ("ignore", ExternalDelete::Ignore),
        ],
    );
    if delete_into_external == ExternalDelete::Soft && e.external_deleted_column.is_none() {
        c.push(
            at,
            "delete_into_external = \"soft\" needs external_deleted_column (the flag column to set)",
        );
    }
    let conflict = c.choice(
        at,
        "conflict",
        e.conflict.as_deref(),
        ConflictPolicy::NewestWins,
        &[
            ("crm_wins", ConflictPolicy::CrmWins),
            ("external_wins", ConflictPolicy::ExternalWins),
            ("newest_wins", ConflictPolicy::NewestWins),
            ("manual", ConflictPolicy::Manual),
        ],
    );
    let settings = e.settings(defaults);
    let batch_size = match settings.batch_size {
        None => config::DEFAULT_BATCH_SIZE,
        Some(n) if (1..=100_000).contains(&n) => n as usize,
        Some(n) => {
            c.push(at, format!("batch_size = {n} must be between 1 and 100000"));
            config::DEFAULT_BATCH_SIZE
        }
    };
    let settle = c.duration(
        at,
        "settle",
        settings.settle.as_deref(),
        config::DEFAULT_SETTLE,
    );
    let overlap = c.duration(
        at,
        "overlap",
        settings.overlap.as_deref(),
        config::DEFAULT_OVERLAP,
    );
    let max_lag = settings
        .max_lag
        .as_deref()
        .map(|text| c.duration(at, "max_lag", Some(text), "0s"));
    let max_delete_ratio = match settings.max_delete_ratio {
        None => config::DEFAULT_MAX_DELETE_RATIO,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            c.push(
                at,
                format!("max_delete_ratio = {r} must be between 0 and 1"),
            );
            config::DEFAULT_MAX_DELETE_RATIO
        }
    };
    let on_truncate = c.choice(
        at,
        "on_truncate",
        settings.on_truncate.as_deref(),
        OnTruncate::Reject,
        &TRUNCATE,
    );
    let secterr = match e.secterr {
        None => config::DEFAULT_SECTERR,
        Some(t) if i32::try_from(t).is_ok() => t,
        Some(t) => {
            c.push(at, format!("secterr = {t} is not a territory id (int)"));
            config::DEFAULT_SECTERR
        }
    };
    let mut defaults_of = |key: &str, map: &std::collections::BTreeMap<String, toml::Value>| {
        let mut out = Vec::new();
        for (col, v) in map {
            c.identifier(at, key, col);
            match toml_to_value(v) {
                Some(v) => out.push((col.clone(), v)),
                None => c.push(
                    at,
                    format!("{key}.{col}: only strings, numbers and booleans are allowed"),
                ),
            }
        }
        out
    };
    let crm_defaults = defaults_of("crm_defaults", &e.crm_defaults);
    let external_defaults = defaults_of("external_defaults", &e.external_defaults);
    let mut match_on = Vec::new();
    for m in &e.match_on {
        c.identifier(at, "match_on.crm", &m.crm);
        c.identifier(at, "match_on.external", &m.external);
        match_on.push((m.crm.clone(), m.external.clone()));
    }
    if e.fields.is_empty() {
        c.push(at, "no [[entity.field]] is mapped; map at least one column");
    }
    let mut seen_crm = BTreeSet::new();
    let mut seen_ext = BTreeSet::new();
    let mut fields = Vec::new();
    for (i, f) in e.fields.iter().enumerate() {
        let fat = format!("{at}: field {} ({})", i + 1, f.crm);
        fields.push(field(c, &fat, f, direction, on_truncate));
        if !seen_crm.insert(f.crm.to_lowercase()) {
            c.push(&fat, format!("CRM column {} is mapped twice", f.crm));
        }
        if !seen_ext.insert(f.external.to_lowercase()) {
            c.push(
                &fat,
                format!("external column {} is mapped twice", f.external),
            );
        }
    }
    if fields.iter().any(|f| f.child.is_some()) && crm::default_entity_id(&crm_table.name).is_none()
    {
        c.push(
            at,
            format!(
                "phone, e-mail and address fields (Table[TypeCode].Column) belong to Company and \
                 Person rows; crm_table {:?} has none",
                crm_table.name
            ),
        );
    }
    let insert_into_external = e.insert_into_external.unwrap_or(true);
    if direction.crm_to_external()
        && insert_into_external
        && e.external_crm_id_column.is_none()
        && state_side != Side::External
    {
        c.push(
            at,
            "rows inserted into the external table could not be found again after a crash: \
             set external_crm_id_column, or keep [state] side = \"external\" so the link is \
             written in the same transaction",
        );
    }
    if direction.external_to_crm() && e.crm_link_column.is_none() {
        c.push(
            at,
            "direction sends rows into CRM but crm_link_column is not set (the CRM column \
             holding the external key, e.g. \"comp_supplierid\")",
        );
    }
    EntityPlan {
        name: e.name.clone(),
        crm_table,
        crm_prefix,
        crm_key,
        crm_updated_column,
        crm_deleted_column,
        crm_link_column: e.crm_link_column.clone(),
        crm_filter: e.crm_filter.clone(),
        external_table,
        external_key: e.external_key.clone(),
        external_crm_id_column: e.external_crm_id_column.clone(),
        external_updated_column: e.external_updated_column.clone(),
        external_deleted_column: e.external_deleted_column.clone(),
        external_filter: e.external_filter.clone(),
        direction,
        insert_into_crm: e.insert_into_crm.unwrap_or(true),
        insert_into_external,
        update_into_crm: e.update_into_crm.unwrap_or(true),
        update_into_external: e.update_into_external.unwrap_or(true),
        delete_into_crm,
        delete_into_external,
        conflict,
        secterr,
        crm_defaults,
        external_defaults,
        match_on,
        fields,
        batch_size,
        settle,
        overlap,
        max_delete_ratio,
        on_truncate,
        max_lag,
    }
}

fn field(
    c: &mut Collector,
    at: &str,
    f: &RawField,
    entity_direction: Direction,
    entity_truncate: OnTruncate,
) -> FieldPlan {
    let child = match ChildRef::parse(&f.crm) {
        None => {
            c.identifier(at, "crm", &f.crm);
            None
        }
        Some(Ok(r)) => {
            c.identifier(at, "crm", &r.column);
            if f.references.is_some() {
                c.push(
                    at,
                    "a phone, e-mail or address column holds no keys of another entity; remove references",
                );
            }
            Some(r)
        }
        Some(Err(why)) => {
            c.push(at, format!("crm = {:?}: {why}", f.crm));
            None
        }
    };
    c.identifier(at, "external", &f.external);
    let direction = c.choice(
        at,
        "direction",
        f.direction.as_deref(),
        entity_direction,
        &DIRECTIONS,
    );
    if (direction.crm_to_external() && !entity_direction.crm_to_external())
        || (direction.external_to_crm() && !entity_direction.external_to_crm())
    {
        c.push(
            at,
            "the field's direction goes where the entity's direction does not; \
             widen the entity's direction or narrow the field's",
        );
    }
    let transform = c.choice(
        at,
        "transform",
        f.transform.as_deref(),
        Transform::None,
        &[
            ("none", Transform::None),
            ("checkbox", Transform::Checkbox),
            ("trim", Transform::Trim),
        ],
    );
    if transform == Transform::Checkbox && !f.values.is_empty() {
        c.push(at, "transform = \"checkbox\" and values cannot be combined");
    }
    let mut seen_ext = BTreeSet::new();
    for ext in f.values.values() {
        if !seen_ext.insert(ext) && direction.external_to_crm() {
            c.push(
                at,
                format!("values: external value {ext:?} appears twice, so it cannot be mapped back to CRM"),
            );
        }
    }
    let on_truncate = c.choice(
        at,
        "on_truncate",
        f.on_truncate.as_deref(),
        entity_truncate,
        &TRUNCATE,
    );
    if f.references.is_some() && (transform != Transform::None || !f.values.is_empty()) {
        c.push(
            at,
            "a field with references holds keys, which are translated, not transformed; \
             remove transform and values",
        );
    }
    FieldPlan {
        child,
        references: f.references.clone(),
        crm: f.crm.clone(),
        external: f.external.clone(),
        values: f
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        direction,
        transform,
        on_truncate,
    }
}

fn table_ref(c: &mut Collector, at: &str, key: &str, text: &str) -> TableRef {
    let parts: Vec<&str> = text.split('.').collect();
    let tr = match parts.as_slice() {
        [name] => TableRef {
            schema: None,
            name: name.to_string(),
        },
        [schema, name] => TableRef {
            schema: Some(schema.to_string()),
            name: name.to_string(),
        },
        _ => {
            c.push(at, format!("{key} = {text:?}: write table or schema.table"));
            return TableRef {
                schema: None,
                name: text.to_string(),
            };
        }
    };
    if let Some(s) = &tr.schema {
        c.identifier(at, key, s);
    }
    c.identifier(at, key, &tr.name);
    tr
}

fn toml_to_value(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::Text(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        _ => return None,
    })
}
