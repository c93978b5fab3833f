//! Binds a validated plan to the live catalogs of both databases: every
//! configured name is looked up (case-insensitively), every mapping's types
//! are checked, and the result carries only the catalogs' own spellings.

mod children;

use crate::crm::SystemColumns;
use crate::endpoint::children::ChildColumn;
use crate::endpoint::{ColumnInfo, Endpoint, EndpointError, Lookup, Scan, TableInfo, WriteBatch};
use crate::plan::{Direction, EntityPlan, FieldPlan, PerSide, Plan, Side, Transform};
use crate::value::{CoerceError, Family, SqlType, Value, Zones};
use std::sync::Arc;

/// One mapped field with both columns resolved.
#[derive(Debug, Clone)]
pub struct BoundField {
    /// The shadow key: the CRM column, lower case.
    pub name: String,
    pub crm: ColumnInfo,
    pub external: ColumnInfo,
    pub plan: FieldPlan,
    /// A reference inside a cycle of entities whose columns may be NULL
    /// where it is written: a row whose parent is not linked yet is written
    /// with NULL here and revisited once the parent is (docs/design.md,
    /// "References between entities").
    pub deferrable: bool,
}

/// Sage CRM system columns present on the table (real names).
#[derive(Debug, Clone, Default)]
pub struct CrmSystem {
    pub created_by: Option<String>,
    pub created_date: Option<String>,
    pub updated_by: Option<String>,
    pub updated_date: Option<String>,
    pub timestamp: Option<String>,
    pub secterr: Option<String>,
}

/// One side of a bound entity: its table and the columns every read and
/// write of that side names.
#[derive(Debug, Clone)]
pub struct BoundSide {
    pub table: Arc<TableInfo>,
    pub key: ColumnInfo,
    /// The column that records when a row changed.
    pub change: ColumnInfo,
    /// The soft-delete flag (`xxx_Deleted` on CRM, `external_deleted_column`
    /// outside), if there is one.
    pub deleted: Option<ColumnInfo>,
    /// Constant values for rows created on this side.
    pub defaults: Vec<(String, Value)>,
}

/// An entity ready to run: both tables and all columns resolved.
#[derive(Debug, Clone)]
pub struct BoundEntity {
    pub plan: EntityPlan,
    pub side: PerSide<BoundSide>,
    /// The CRM column holding the external key (NULL: not linked).
    pub crm_link: Option<ColumnInfo>,
    /// Sage CRM's system columns, set by its write rules.
    pub crm_system: CrmSystem,
    /// The external column holding the CRM id, if configured.
    pub external_crm_id: Option<ColumnInfo>,
    pub fields: Vec<BoundField>,
    /// The cycle of references this entity is in, when every entity of it
    /// is bound (a full run): the run revisits the cycle's deferred rows
    /// once all of its entities have run.
    pub cycle: Option<usize>,
    /// How the CRM scan reads the fields kept in Sage CRM's child tables
    /// (phones, e-mails, addresses), and how writes reach them.
    pub crm_children: Vec<ChildColumn>,
    /// Zones to move wall-clock values from CRM to external and back.
    pub to_external: Zones,
    pub to_crm: Zones,
}

impl BoundField {
    /// This field's column on `side`.
    pub fn column(&self, side: Side) -> &ColumnInfo {
        match side {
            Side::Crm => &self.crm,
            Side::External => &self.external,
        }
    }
}

impl BoundEntity {
    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// The CRM link column's value that names the external row with key
    /// `external_key` (canonical text), in the column's own type; `None`
    /// without a link column.
    pub fn link_value(&self, external_key: &str) -> Option<Result<Value, CoerceError>> {
        let c = self.crm_link.as_ref()?;
        Some(Value::from_key_string(external_key, &c.ty))
    }

    /// The key `key` (canonical text, as links hold it) of a `side` row, in
    /// its key column's type.
    pub fn key_value(&self, side: Side, key: &str) -> Result<Value, CoerceError> {
        Value::from_key_string(key, &self.side[side].key.ty)
    }

    /// The column of a `side` row that names its counterpart: the CRM link
    /// column (holding the external key) or the external CRM-id column
    /// (holding the CRM id). The two differ in what they hold; both mark a
    /// row as claimed.
    pub fn naming_column(&self, side: Side) -> Option<&ColumnInfo> {
        match side {
            Side::Crm => self.crm_link.as_ref(),
            Side::External => self.external_crm_id.as_ref(),
        }
    }

    /// The zones that carry a wall-clock value from `side` to the other.
    pub fn zones_from(&self, side: Side) -> Zones {
        match side {
            Side::Crm => self.to_external,
            Side::External => self.to_crm,
        }
    }

    /// An empty write batch for the table of `side`; on CRM it carries
    /// the child columns, so that their values reach their own rows.
    pub fn write_batch(&self, side: Side) -> WriteBatch {
        let s = &self.side[side];
        let mut b = WriteBatch::new(s.table.clone(), s.key.name.clone());
        if side == Side::Crm {
            b.children = self.crm_children.clone();
        }
        b
    }

    /// The CRM read: [`BoundEntity::scan`] of CRM.
    pub fn crm_scan(&self) -> Scan {
        self.scan(Side::Crm)
    }

    /// The external read: [`BoundEntity::scan`] of the external side.
    pub fn external_scan(&self) -> Scan {
        self.scan(Side::External)
    }

    /// The read of `side`: key, change column, the deleted flag and the
    /// naming column (on CRM in that order, outside the other way round),
    /// then the mapped columns and the `match_on` columns that are not
    /// mapped (a sync matches by the values it read).
    pub fn scan(&self, side: Side) -> Scan {
        let s = &self.side[side];
        let mut columns = vec![s.key.name.clone(), s.change.name.clone()];
        let (deleted, naming) = (&s.deleted, self.naming_column(side).cloned());
        let flags = match side {
            Side::Crm => [deleted.clone(), naming],
            Side::External => [naming, deleted.clone()],
        };
        let mut add = |name: &String| {
            if !columns.contains(name) {
                columns.push(name.clone());
            }
        };
        for c in flags.iter().flatten() {
            add(&c.name);
        }
        for f in &self.fields {
            add(&f.column(side).name);
        }
        for pair in &self.plan.match_on {
            let name = match side {
                Side::Crm => &pair.0,
                Side::External => &pair.1,
            };
            if let Ok(col) = s.table.column(name) {
                add(&col.name);
            }
        }
        Scan {
            table: s.table.clone(),
            columns,
            key: s.key.name.clone(),
            change: s.change.name.clone(),
            change_ty: s.change.ty.clone(),
            filter: match side {
                Side::Crm => self.plan.crm_filter.clone(),
                Side::External => self.plan.external_filter.clone(),
            },
            children: match side {
                Side::Crm => self.crm_children.clone(),
                Side::External => Vec::new(),
            },
        }
    }
}

/// What `bind` found: errors stop a run, warnings are reported.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// The configuration does not fit the live schema.
#[derive(Debug, thiserror::Error)]
#[error("{file}: the configuration does not match the live database schema:\n  {}", problems.join("\n  "))]
pub struct SchemaMismatch {
    pub file: String,
    pub problems: Vec<String>,
}

fn lookup_column(
    f: &mut Findings,
    at: &str,
    side: &str,
    table: &TableInfo,
    key: &str,
    name: &str,
) -> Option<ColumnInfo> {
    match table.column(name) {
        Ok(c) => Some(c.clone()),
        Err(Lookup::Missing { suggestion }) => {
            let hint = suggestion
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            f.errors.push(format!(
                "{at}: {key}: column {name:?} does not exist in the {side} table {}{hint}",
                table.qualified()
            ));
            None
        }
        Err(Lookup::Ambiguous(names)) => {
            f.errors.push(format!(
                "{at}: {key}: column {name:?} matches several columns of {} ({}), which differ only in case",
                table.qualified(),
                names.join(", ")
            ));
            None
        }
    }
}

async fn lookup_table(
    f: &mut Findings,
    at: &str,
    side: &str,
    ep: &dyn Endpoint,
    key: &str,
    schema: Option<&str>,
    name: &str,
) -> Result<Option<TableInfo>, EndpointError> {
    match ep.table(schema, name).await {
        Ok(Some(t)) => Ok(Some(t)),
        Ok(None) => {
            let full = match schema {
                Some(s) => format!("{s}.{name}"),
                None => name.to_string(),
            };
            f.errors.push(format!(
                "{at}: {key}: table {full:?} does not exist in the {side} database {}",
                ep.describe()
            ));
            Ok(None)
        }
        Err(EndpointError::Schema(m)) => {
            f.errors.push(format!("{at}: {key}: {m}"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Checks that data can flow between the two columns in `direction`.
/// The error for a write into a column the database computes: `what`
/// names the column, `fix` says what to do instead.
fn computed(what: &str, fix: &str) -> String {
    format!(
        "{what} is computed by the database (a generated or computed column, a rowversion), \
         so crmsync cannot write it; {fix}"
    )
}

fn check_types(f: &mut Findings, at: &str, field: &FieldPlan, crm: &ColumnInfo, ext: &ColumnInfo) {
    // The two columns of a reference hold different keys (a CRM id, an
    // ERP code): each is checked against its parent's key instead.
    if field.references.is_some() {
        return;
    }
    let (cf, ef) = (crm.ty.family(), ext.ty.family());
    let ok = match field.transform {
        Transform::Checkbox => {
            cf == Family::Text && matches!(ef, Family::Bool | Family::Number | Family::Text)
        }
        _ if !field.values.is_empty() => cf == Family::Text || cf == Family::Number,
        _ => {
            cf == ef
                || (field.direction == Direction::CrmToExternal && ef == Family::Text)
                || (field.direction == Direction::ExternalToCrm && cf == Family::Text)
        }
    };
    if !ok {
        f.errors.push(format!(
            "{at}: cannot map {} {} to {} {}: the types do not fit{}",
            crm.name,
            crm.ty.describe(),
            ext.name,
            ext.ty.describe(),
            if field.transform == Transform::Checkbox {
                " (checkbox needs a CRM text column and a boolean external column)"
            } else {
                "; map columns of the same kind or add a transform"
            }
        ));
    }
    if !field.values.is_empty() {
        // Only the mapped values travel: check those, not the columns.
        for (c, x) in &field.values {
            let checks = [
                (x, ext, field.direction.crm_to_external()),
                (c, crm, field.direction.external_to_crm()),
            ];
            for (v, col, flows) in checks {
                if let (
                    true,
                    SqlType::Text {
                        max_len: Some(max),
                        unit,
                        ..
                    },
                ) = (flows, &col.ty)
                {
                    if crate::value::text_len(v, *unit) > *max as usize {
                        f.errors.push(format!(
                            "{at}: values: {v:?} is longer than {} holds ({max})",
                            col.name
                        ));
                    }
                }
            }
        }
    } else if let (
        SqlType::Text {
            max_len: Some(a), ..
        },
        SqlType::Text {
            max_len: Some(b), ..
        },
    ) = (&crm.ty, &ext.ty)
    {
        if field.direction.crm_to_external() && a > b {
            f.warnings.push(format!(
                "{at}: {} holds up to {a} but {} only {b}; longer values follow on_truncate",
                crm.name, ext.name
            ));
        }
        if field.direction.external_to_crm() && b > a {
            f.warnings.push(format!(
                "{at}: {} holds up to {b} but {} only {a}; longer values follow on_truncate",
                ext.name, crm.name
            ));
        }
    }
}

/// How far a column can hold the values of a key column.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KeyFit {
    /// Every value.
    All,
    /// Integers from `lo` to `hi` only: today's keys decide.
    Between(i128, i128),
    /// The key is text of any length, the column holds `n` units.
    Bounded(u32),
    /// No value, or none without changing it.
    Never,
}

/// The integers a column of type `ty` can hold, where it holds integers.
fn integer_range(ty: &SqlType) -> Option<(i128, i128)> {
    let digits = |d: u32| 10i128.checked_pow(d.min(38)).map_or(i128::MAX, |p| p - 1);
    match ty {
        SqlType::Int { bytes: 1 } => Some((0, 255)),
        SqlType::Int { bytes: 2 } => Some((i16::MIN.into(), i16::MAX.into())),
        SqlType::Int { bytes: 4 } => Some((i32::MIN.into(), i32::MAX.into())),
        SqlType::Int { .. } => Some((i64::MIN.into(), i64::MAX.into())),
        SqlType::Decimal { precision, scale } => {
            let d = digits(precision.saturating_sub(*scale));
            Some((-d, d))
        }
        SqlType::Text { max_len: None, .. } | SqlType::Other(_) => Some((i128::MIN, i128::MAX)),
        SqlType::Text {
            max_len: Some(n), ..
        } => Some((-digits(n.saturating_sub(1)), digits(*n))),
        _ => None,
    }
}

/// Whether a column of type `col` can hold every key of type `key`, as
/// the key's canonical text turned into the column's type.
fn key_fit(key: &SqlType, col: &SqlType) -> KeyFit {
    let integer_key = matches!(key, SqlType::Int { .. } | SqlType::Decimal { scale: 0, .. });
    if integer_key {
        return match (integer_range(key), integer_range(col)) {
            (Some((klo, khi)), Some((lo, hi))) if lo <= klo && khi <= hi => KeyFit::All,
            (Some(_), Some((lo, hi))) => KeyFit::Between(lo, hi),
            _ => KeyFit::Never,
        };
    }
    match (key, col) {
        (_, SqlType::Other(_)) | (_, SqlType::Text { max_len: None, .. })
            if key.family() == Family::Text || *key == SqlType::Uuid =>
        {
            KeyFit::All
        }
        (SqlType::Uuid, SqlType::Uuid) => KeyFit::All,
        (
            SqlType::Uuid,
            SqlType::Text {
                max_len: Some(n), ..
            },
        ) if *n >= 36 => KeyFit::All,
        (
            SqlType::Text {
                max_len: Some(a), ..
            },
            SqlType::Text {
                max_len: Some(b), ..
            },
        ) if a <= b => KeyFit::All,
        (
            SqlType::Text { max_len: None, .. } | SqlType::Other(_),
            SqlType::Text {
                max_len: Some(b), ..
            },
        ) => KeyFit::Bounded(*b),
        _ if key.family() == col.family() && key.family() != Family::Text => KeyFit::All,
        _ => KeyFit::Never,
    }
}

/// A column type that holds every key of type `key`, for messages.
fn fitting_type(key: &SqlType) -> String {
    match key {
        SqlType::Int { bytes: 8 } => {
            "bigint (or numeric(19,0), or text of at least 20 characters)".into()
        }
        SqlType::Int { .. } => "int or bigint (or text of at least 11 characters)".into(),
        SqlType::Decimal { precision, .. } => {
            format!(
                "numeric({precision},0) or wider (or text of at least {} characters)",
                precision + 1
            )
        }
        SqlType::Uuid => "uuid / uniqueidentifier, or text of at least 36 characters".into(),
        SqlType::Text {
            max_len: Some(n), ..
        } => {
            format!("text of at least {n} characters (varchar({n}) / nvarchar({n}))")
        }
        other => other.describe(),
    }
}

fn as_integer(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some((*i).into()),
        Value::Decimal(d) => d.trunc().to_string().parse().ok(),
        _ => None,
    }
}

/// A configured column with the config key that names it.
struct Named<'a> {
    config_key: &'static str,
    column: &'a ColumnInfo,
}

/// Checks that `column` can hold every key of `key`, a column of
/// `key_table` on `ep`: an error when it cannot, or when today's keys
/// already pass its range; a warning when only today's keys fit.
async fn check_key_column(
    f: &mut Findings,
    at: &str,
    (ep, key_table): (&dyn Endpoint, &TableInfo),
    key: Named<'_>,
    column: Named<'_>,
) -> Result<(), EndpointError> {
    let (key_key, key) = (key.config_key, key.column);
    let (column_key, column) = (column.config_key, column.column);
    let what = format!(
        "{column_key} {} ({}) cannot hold every key of {key_key} {} ({})",
        column.name,
        column.ty.describe(),
        key.name,
        key.ty.describe()
    );
    let fits = format!("change it to {}", fitting_type(&key.ty));
    match key_fit(&key.ty, &column.ty) {
        KeyFit::All => {}
        KeyFit::Never => f.errors.push(format!("{at}: {what}; {fits}")),
        KeyFit::Bounded(n) => f.warnings.push(format!(
            "{at}: {what}: keys longer than {n} will be rejected; {fits}"
        )),
        KeyFit::Between(lo, hi) => {
            let range = ep.column_range(key_table, &key.name).await?;
            let today = range.and_then(|(a, b)| Some((as_integer(&a)?, as_integer(&b)?)));
            match today {
                Some((a, b)) if a < lo || b > hi => f.errors.push(format!(
                    "{at}: {what}: it holds {lo} to {hi} but {} already holds {}; {fits}",
                    key_table.qualified(),
                    if b > hi { b } else { a }
                )),
                _ => f.warnings.push(format!(
                    "{at}: {what}: it holds {lo} to {hi}, enough for today's keys; rows whose key \
                     passes it will be rejected; {fits}"
                )),
            }
        }
    }
    Ok(())
}

/// Binds one entity; problems go to `f`, and `None` comes back if any
/// name could not be resolved.
pub async fn bind_entity(
    plan: &Plan,
    e: &EntityPlan,
    crm: &dyn Endpoint,
    ext: &dyn Endpoint,
    f: &mut Findings,
) -> Result<Option<BoundEntity>, EndpointError> {
    let at = format!("entity {:?}", e.name);
    let crm_t = lookup_table(
        f,
        &at,
        "CRM",
        crm,
        "crm_table",
        e.crm_table.schema.as_deref(),
        &e.crm_table.name,
    )
    .await?;
    let ext_t = lookup_table(
        f,
        &at,
        "external",
        ext,
        "external_table",
        e.external_table.schema.as_deref(),
        &e.external_table.name,
    )
    .await?;
    let (Some(crm_t), Some(ext_t)) = (crm_t, ext_t) else {
        return Ok(None);
    };
    let errors_before = f.errors.len();
    let crm_key = match &e.crm_key {
        Some(k) => lookup_column(f, &at, "CRM", &crm_t, "crm_key", k),
        None => match crm_t.primary_key.as_slice() {
            [one] => crm_t.column(one).ok().cloned(),
            _ => {
                f.errors.push(format!(
                    "{at}: {} has no single-column primary key; set crm_key",
                    crm_t.qualified()
                ));
                None
            }
        },
    };
    let crm_change = lookup_column(
        f,
        &at,
        "CRM",
        &crm_t,
        "crm_updated_column",
        &e.crm_updated_column,
    );
    let crm_deleted = crm_t.column(&e.crm_deleted_column).ok().cloned();
    if crm_deleted.is_none() {
        f.warnings.push(format!(
            "{at}: {} has no column {}; CRM deletes cannot be seen",
            crm_t.qualified(),
            e.crm_deleted_column
        ));
    }
    let crm_link = e
        .crm_link_column
        .as_ref()
        .and_then(|c| lookup_column(f, &at, "CRM", &crm_t, "crm_link_column", c));
    let sys = SystemColumns::for_prefix(&e.crm_prefix);
    let opt = |n: &str| crm_t.column(n).ok().map(|c| c.name.clone());
    let crm_system = CrmSystem {
        created_by: opt(&sys.created_by),
        created_date: opt(&sys.created_date),
        updated_by: opt(&sys.updated_by),
        updated_date: opt(&sys.updated_date),
        timestamp: opt(&sys.timestamp),
        secterr: opt(&sys.secterr),
    };
    let external_key = lookup_column(f, &at, "external", &ext_t, "external_key", &e.external_key);
    let external_crm_id = e
        .external_crm_id_column
        .as_ref()
        .and_then(|c| lookup_column(f, &at, "external", &ext_t, "external_crm_id_column", c));
    let external_change = lookup_column(
        f,
        &at,
        "external",
        &ext_t,
        "external_updated_column",
        &e.external_updated_column,
    );
    let external_deleted = e
        .external_deleted_column
        .as_ref()
        .and_then(|c| lookup_column(f, &at, "external", &ext_t, "external_deleted_column", c));
    for (key, col) in [
        ("crm_updated_column", &crm_change),
        ("external_updated_column", &external_change),
    ] {
        if let Some(c) = col {
            if !c.ty.is_timestamp() {
                f.errors.push(format!(
                    "{at}: {key}: {} is {}, not a timestamp; name the column that records when a row changed",
                    c.name,
                    c.ty.describe()
                ));
            }
        }
    }
    let mut fields = Vec::new();
    let mut bound_children = children::bind(plan, e, crm, &crm_t, crm_key.as_ref(), f).await?;
    let mut crm_children = Vec::new();
    for (i, fp) in e.fields.iter().enumerate() {
        let fat = format!("{at}: field {} ({})", i + 1, fp.crm);
        let c = match &fp.child {
            None => lookup_column(f, &fat, "CRM", &crm_t, "crm", &fp.crm),
            Some(_) => bound_children.remove(&i).map(|b| {
                crm_children.push(b.read);
                b.column
            }),
        };
        let x = lookup_column(f, &fat, "external", &ext_t, "external", &fp.external);
        if let (Some(c), Some(x)) = (c, x) {
            if crate::crm::NEVER_WRITE
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&c.name))
                && fp.direction.external_to_crm()
            {
                f.errors.push(format!(
                    "{fat}: {} is maintained by Sage CRM triggers and must never be written",
                    c.name
                ));
            }
            check_types(f, &fat, fp, &c, &x);
            for (side, col, writes, only) in [
                ("CRM", &c, fp.direction.external_to_crm(), "crm_to_external"),
                (
                    "external",
                    &x,
                    fp.direction.crm_to_external(),
                    "external_to_crm",
                ),
            ] {
                if writes && col.generated {
                    f.errors.push(computed(
                        &format!("{fat}: the {side} column {}", col.name),
                        &format!("let the field flow from that side only (direction = \"{only}\") or drop it"),
                    ));
                }
            }
            fields.push(BoundField {
                name: c.name.to_lowercase(),
                crm: c,
                external: x,
                plan: fp.clone(),
                deferrable: false,
            });
        }
    }
    let to_external = Zones {
        from: plan.crm.timezone,
        to: plan.external.timezone,
    };
    let to_crm = Zones {
        from: plan.external.timezone,
        to: plan.crm.timezone,
    };
    // Columns crmsync writes besides the fields.
    let written = [
        (
            "crm_link_column",
            crm_link.as_ref(),
            e.direction.external_to_crm(),
        ),
        (
            "external_crm_id_column",
            external_crm_id.as_ref(),
            e.direction.crm_to_external(),
        ),
        (
            "external_deleted_column",
            external_deleted.as_ref(),
            e.direction.crm_to_external(),
        ),
    ];
    for (key, col, writes) in written {
        if let Some(c) = col.filter(|c| writes && c.generated) {
            f.errors.push(computed(
                &format!("{at}: {key}: {}", c.name),
                "name a column of its own",
            ));
        }
    }
    let mut defaults = |side: &str, table: &TableInfo, list: &[(String, Value)], zones| {
        let mut out = Vec::new();
        for (col, v) in list {
            if let Some(c) = lookup_column(f, &at, side, table, &format!("{side}_defaults"), col) {
                if c.generated {
                    f.errors.push(computed(
                        &format!("{at}: {side}_defaults.{col}: {}", c.name),
                        &format!("leave it out of {side}_defaults"),
                    ));
                }
                match v.clone().coerce(&c.ty, Some(zones), false) {
                    Ok(v) => out.push((c.name.clone(), v)),
                    Err(err) => f.errors.push(format!("{at}: {side}_defaults.{col}: {err}")),
                }
            }
        }
        out
    };
    let crm_defaults = defaults("crm", &crm_t, &e.crm_defaults, to_crm);
    let external_defaults = defaults("external", &ext_t, &e.external_defaults, to_external);
    for (c, x) in &e.match_on {
        lookup_column(f, &at, "CRM", &crm_t, "match_on.crm", c);
        lookup_column(f, &at, "external", &ext_t, "match_on.external", x);
    }
    // A key names one row: without a unique index on it alone, two rows
    // may share a value and each would take the other's writes.
    for (key, table, col) in [
        ("crm_key", &crm_t, crm_key.as_ref()),
        ("external_key", &ext_t, external_key.as_ref()),
    ] {
        if let Some(c) = col.filter(|c| !table.is_unique(&c.name)) {
            f.warnings.push(format!(
                "{at}: {key} {} is neither the primary key of {} nor alone in a unique index, \
                 so two rows may share a value and crmsync would take them for one; name the \
                 table's key, or add one: CREATE UNIQUE INDEX ON {} ({})",
                c.name,
                table.qualified(),
                table.qualified(),
                c.name
            ));
        }
    }
    if let Some(k) = &external_key {
        let mapped = fields.iter().any(|fl| fl.external.name == k.name);
        if e.direction.crm_to_external()
            && e.insert_into_external
            && !(k.identity || k.has_default || mapped)
        {
            f.errors.push(format!(
                "{at}: external_key {} has no default or identity and no field is mapped to it, \
                 so crmsync cannot insert rows; give it a default or map a field to it",
                k.name
            ));
        }
    }
    if let Some(c) = &crm_change {
        if !crm_t.has_index_starting_with(&c.name) {
            f.warnings.push(format!(
                "{at}: no index on {} starts with {}; every incremental run will scan the whole table. \
                 Add one: CREATE INDEX ON {} ({}, {})",
                crm_t.qualified(),
                c.name,
                crm_t.qualified(),
                c.name,
                crm_key.as_ref().map(|k| k.name.as_str()).unwrap_or("key")
            ));
        }
    }
    if let Some(c) = &external_change {
        if e.direction.external_to_crm() && !ext_t.has_index_starting_with(&c.name) {
            f.warnings.push(format!(
                "{at}: no index on {} starts with {}; every incremental run will scan the whole table. \
                 Add one: CREATE INDEX ON {} ({}, {})",
                ext_t.qualified(),
                c.name,
                ext_t.qualified(),
                c.name,
                external_key.as_ref().map(|k| k.name.as_str()).unwrap_or("key")
            ));
        }
    }
    let named = |config_key, column| Named { config_key, column };
    if let (Some(k), Some(lc)) = (&external_key, &crm_link) {
        let (k, lc) = (named("external_key", k), named("crm_link_column", lc));
        check_key_column(f, &at, (ext, &ext_t), k, lc).await?;
    }
    if let (Some(k), Some(id)) = (&crm_key, &external_crm_id) {
        let (k, id) = (named("crm_key", k), named("external_crm_id_column", id));
        check_key_column(f, &at, (crm, &crm_t), k, id).await?;
    }
    if f.errors.len() > errors_before {
        return Ok(None);
    }
    let (Some(crm_key), Some(crm_change), Some(external_key), Some(external_change)) =
        (crm_key, crm_change, external_key, external_change)
    else {
        return Ok(None);
    };
    Ok(Some(BoundEntity {
        plan: e.clone(),
        side: PerSide::new(
            BoundSide {
                table: Arc::new(crm_t),
                key: crm_key,
                change: crm_change,
                deleted: crm_deleted,
                defaults: crm_defaults,
            },
            BoundSide {
                table: Arc::new(ext_t),
                key: external_key,
                change: external_change,
                deleted: external_deleted,
                defaults: external_defaults,
            },
        ),
        crm_link,
        crm_system,
        external_crm_id,
        fields,
        cycle: None,
        crm_children,
        to_external,
        to_crm,
    }))
}

/// Binds the selected entities; any error makes the whole bind fail with
/// every problem listed.
pub async fn bind(
    plan: &Plan,
    only: Option<&str>,
    crm: &dyn Endpoint,
    ext: &dyn Endpoint,
) -> Result<(Vec<BoundEntity>, Findings), BindError> {
    let mut f = Findings::default();
    let mut out = Vec::new();
    for e in selected(plan, only).map_err(BindError::Mismatch)? {
        if let Some(b) = bind_entity(plan, e, crm, ext, &mut f).await? {
            out.push(b);
        }
    }
    // A reference field's columns hold its parent's keys: the CRM column
    // the parent's CRM key, the external column its external key. (With
    // --entity the parent may not be bound here; every full run checks.)
    if f.errors.is_empty() {
        for b in &out {
            for fld in &b.fields {
                let Some(r) = &fld.plan.references else {
                    continue;
                };
                let Some(parent) = out.iter().find(|p| p.name().eq_ignore_ascii_case(r)) else {
                    continue;
                };
                let at = format!(
                    "entity {:?}: field {} (references {:?})",
                    b.name(),
                    fld.plan.crm,
                    parent.name()
                );
                for (side, ep) in [(Side::Crm, crm), (Side::External, ext)] {
                    let parent_side = &parent.side[side];
                    check_key_column(
                        &mut f,
                        &at,
                        (ep, &parent_side.table),
                        Named {
                            config_key: match side {
                                Side::Crm => "the parent's CRM key",
                                Side::External => "the parent's external key",
                            },
                            column: &parent_side.key,
                        },
                        Named {
                            config_key: match side {
                                Side::Crm => "the CRM column",
                                Side::External => "the external column",
                            },
                            column: fld.column(side),
                        },
                    )
                    .await?;
                }
            }
        }
    }
    if f.errors.is_empty() {
        out = order_cycles(plan, out, &mut f);
    }
    if f.errors.is_empty() {
        for b in &out {
            for (scan, side) in [
                (b.crm_scan(), Side::Crm),
                (b.external_scan(), Side::External),
            ] {
                if scan.filter.is_none() {
                    continue;
                }
                let ep = if side == Side::Crm { crm } else { ext };
                if let Err(err) = ep.check_filter(&scan).await {
                    match err {
                        EndpointError::Schema(m) => f.errors.push(format!(
                            "entity {:?}: {}_filter: {m}",
                            b.name(),
                            side.as_str()
                        )),
                        other => return Err(other.into()),
                    }
                }
            }
        }
    }
    if !f.errors.is_empty() {
        return Err(BindError::Mismatch(SchemaMismatch {
            file: plan.file.display().to_string(),
            problems: f.errors,
        }));
    }
    Ok((out, f))
}

/// Marks the references that may be written NULL first (those inside a
/// cycle whose columns take NULL wherever the field writes), and orders
/// each fully bound cycle so that every other reference finds its parent
/// run before it. A cycle whose references all refuse NULL can never be
/// written and is an error.
fn order_cycles(plan: &Plan, mut out: Vec<BoundEntity>, f: &mut Findings) -> Vec<BoundEntity> {
    let cycles = crate::plan::order::cycles(&plan.entities);
    let cycle_of = |name: &str| {
        cycles.iter().position(|c| {
            c.iter()
                .any(|&i| plan.entities[i].name.eq_ignore_ascii_case(name))
        })
    };
    for b in &mut out {
        let Some(own) = cycle_of(b.name()) else {
            continue;
        };
        for fld in &mut b.fields {
            let Some(r) = &fld.plan.references else {
                continue;
            };
            let d = fld.plan.direction;
            fld.deferrable = cycle_of(r) == Some(own)
                && (!d.from(Side::Crm) || fld.external.nullable)
                && (!d.from(Side::External) || fld.crm.nullable);
        }
    }
    for (n, members) in cycles.iter().enumerate() {
        let names: Vec<&str> = members
            .iter()
            .map(|&i| plan.entities[i].name.as_str())
            .collect();
        let bound: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, b)| names.iter().any(|m| m.eq_ignore_ascii_case(b.name())))
            .map(|(i, _)| i)
            .collect();
        // Which bound member must run before which: a reference that
        // cannot be written NULL needs its parent linked first.
        let needs: Vec<(usize, usize)> = bound
            .iter()
            .enumerate()
            .flat_map(|(child, &bi)| {
                let bound = &bound;
                let out = &out;
                out[bi]
                    .fields
                    .iter()
                    .filter(|fld| !fld.deferrable)
                    .filter_map(|fld| fld.plan.references.as_deref())
                    .filter_map(move |r| {
                        bound
                            .iter()
                            .position(|&p| out[p].name().eq_ignore_ascii_case(r))
                    })
                    .map(move |parent| (child, parent))
            })
            .collect();
        match crate::plan::order::order_within(bound.len(), &needs) {
            Ok(order) => {
                if bound.len() == members.len() {
                    let mut slots: Vec<Option<BoundEntity>> = bound
                        .iter()
                        .map(|&i| {
                            let mut b = out[i].clone();
                            b.cycle = Some(n);
                            Some(b)
                        })
                        .collect();
                    for (&at, k) in bound.iter().zip(order) {
                        if let Some(b) = slots[k].take() {
                            out[at] = b;
                        }
                    }
                }
            }
            Err(stuck) => {
                let stuck: Vec<&str> = stuck.iter().map(|&k| out[bound[k]].name()).collect();
                f.errors.push(format!(
                    "entities {}: their references form a cycle in which every reference \
                     refuses NULL, so no row of it can be written first; make one reference's \
                     columns nullable (in the databases it writes into), or leave that \
                     reference out of the mapping",
                    stuck.join(", ")
                ));
            }
        }
    }
    out
}

/// The entities a command applies to.
pub fn selected<'p>(
    plan: &'p Plan,
    only: Option<&str>,
) -> Result<Vec<&'p EntityPlan>, SchemaMismatch> {
    match only {
        None => Ok(plan.entities.iter().collect()),
        Some(name) => match plan.entity(name) {
            Some(e) => Ok(vec![e]),
            None => Err(SchemaMismatch {
                file: plan.file.display().to_string(),
                problems: vec![format!(
                    "--entity {name:?} is not configured (entities: {})",
                    plan.entities
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )],
            }),
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Mismatch(#[from] SchemaMismatch),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

impl SchemaMismatch {
    /// The configuration does not fit: bad configuration.
    pub fn exit_code(&self) -> i32 {
        crate::exit::BAD_CONFIG
    }
}

impl BindError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BindError::Mismatch(e) => e.exit_code(),
            BindError::Endpoint(e) => e.exit_code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::LengthUnit;

    fn text(n: Option<u32>) -> SqlType {
        SqlType::Text {
            max_len: n,
            unit: LengthUnit::Chars,
            fixed: false,
        }
    }

    #[test]
    fn key_columns_fit_by_type_and_range() {
        let int = SqlType::Int { bytes: 4 };
        let bigint = SqlType::Int { bytes: 8 };
        assert_eq!(key_fit(&int, &bigint), KeyFit::All);
        assert_eq!(key_fit(&int, &text(Some(11))), KeyFit::All);
        assert_eq!(
            key_fit(&bigint, &int),
            KeyFit::Between(i32::MIN.into(), i32::MAX.into())
        );
        assert_eq!(
            key_fit(&bigint, &text(Some(12))),
            KeyFit::Between(-99_999_999_999, 999_999_999_999)
        );
        let numeric = SqlType::Decimal {
            precision: 18,
            scale: 0,
        };
        assert_eq!(key_fit(&int, &numeric), KeyFit::All);
        assert!(matches!(key_fit(&bigint, &numeric), KeyFit::Between(..)));
        assert_eq!(key_fit(&SqlType::Uuid, &int), KeyFit::Never);
        assert_eq!(key_fit(&SqlType::Uuid, &text(Some(40))), KeyFit::All);
        assert_eq!(key_fit(&SqlType::Uuid, &text(Some(32))), KeyFit::Never);
        assert_eq!(key_fit(&text(Some(20)), &text(Some(10))), KeyFit::Never);
        assert_eq!(key_fit(&text(Some(12)), &text(Some(12))), KeyFit::All);
        assert_eq!(key_fit(&text(Some(12)), &int), KeyFit::Never);
        assert_eq!(key_fit(&text(None), &text(Some(40))), KeyFit::Bounded(40));
        assert_eq!(key_fit(&int, &SqlType::Uuid), KeyFit::Never);
    }
}
