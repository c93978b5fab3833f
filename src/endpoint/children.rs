//! Sage CRM's phones, e-mails and addresses as columns of the entity row:
//! the bound description of a child (its table, its link table and how a
//! link names the entity row), the SQL that reads a child's value and its
//! change time as columns of the entity's scan, and the writes that carry a
//! value back by Sage CRM's rules, inside the transaction of the entity
//! row's own write (docs/design.md section 11).
//!
//! The SQL is written once here for both kinds of database; a [`Dialect`]
//! quotes names and numbers parameters. Names come from the live catalog,
//! values (the entity id, the type code, keys) are always parameters.

use super::{Assign, Insert, Result, TableInfo, Update, WriteBatch};
use crate::value::Value;
use async_trait::async_trait;
use std::sync::Arc;

/// How one kind of database spells what the child SQL needs.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    pub quote: fn(&str) -> String,
    /// The placeholder of parameter `n` (from 1).
    pub param: fn(usize) -> String,
    /// `TOP 1` (SQL Server) rather than `LIMIT 1`.
    pub top: bool,
    /// `GREATEST(…)` exists (PostgreSQL); otherwise the greatest of a
    /// `VALUES` list, which SQL Server before 2022 needs.
    pub greatest: bool,
}

impl Dialect {
    fn table(&self, t: &TableInfo) -> String {
        format!("{}.{}", (self.quote)(&t.schema), (self.quote)(&t.name))
    }

    fn col(&self, alias: &str, c: &str) -> String {
        format!("{alias}.{}", (self.quote)(c))
    }

    /// `SELECT [TOP 1] {cols} {rest} [LIMIT 1]`.
    fn first(&self, cols: &str, rest: &str) -> String {
        if self.top {
            format!("SELECT TOP 1 {cols} {rest}")
        } else {
            format!("SELECT {cols} {rest} LIMIT 1")
        }
    }

    /// The greatest of `items` (NULLs ignored).
    fn greatest(&self, items: &[String]) -> String {
        if self.greatest {
            format!("GREATEST({})", items.join(", "))
        } else {
            let rows: Vec<String> = items.iter().map(|i| format!("({i})")).collect();
            format!(
                "(SELECT MAX(crmsync_v) FROM (VALUES {}) AS crmsync_x(crmsync_v))",
                rows.join(", ")
            )
        }
    }
}

/// Parameters of one statement: values collected in order, equal values
/// sharing one placeholder.
#[derive(Debug)]
pub struct Params {
    first: usize,
    pub values: Vec<Value>,
}

impl Params {
    /// Parameters numbered from `first`.
    pub fn from(first: usize) -> Params {
        Params {
            first,
            values: Vec::new(),
        }
    }

    fn push(&mut self, d: &Dialect, v: &Value) -> String {
        let i = match self.values.iter().position(|x| x == v) {
            Some(i) => i,
            None => {
                self.values.push(v.clone());
                self.values.len() - 1
            }
        };
        (d.param)(self.first + i)
    }
}

/// A condition every link row of a child must meet, besides naming the
/// entity row.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkCond {
    Eq(String, Value),
    IsNull(String),
}

/// The system columns of a child or link table (real names).
#[derive(Debug, Clone, Default)]
pub struct System {
    pub created_by: Option<String>,
    pub created_date: Option<String>,
    pub updated_by: Option<String>,
    /// Required: the change time of the row.
    pub updated_date: String,
    pub timestamp: Option<String>,
    /// Required: NULL live, 1 deleted.
    pub deleted: String,
    pub secterr: Option<String>,
}

/// One child of an entity row (`Phone[Business]`, `Address[primary]`),
/// bound to the live catalog.
#[derive(Debug)]
pub struct Child {
    /// `Phone[Business]`, for messages.
    pub label: String,
    pub table: Arc<TableInfo>,
    pub key: String,
    pub system: System,
    pub link: Arc<TableInfo>,
    pub link_key: String,
    pub link_system: System,
    /// The link column naming the child row.
    pub link_child: String,
    /// The link column holding the entity row's key.
    pub link_record: String,
    /// What else a link row of this child holds: the entity id and the
    /// type code, or which of the address link's columns is empty.
    pub link_conds: Vec<LinkCond>,
    /// The entity's table and key.
    pub parent: Arc<TableInfo>,
    pub parent_key: String,
    /// The entity's primary-address column, for an address.
    pub primary: Option<String>,
    /// The child follows the primary-address column rather than a type.
    pub follows_primary: bool,
    /// A link column a new link row copies from the entity row: a
    /// person's address link names the person's company
    /// (`AdLi_CompanyID` from `Pers_CompanyId`).
    pub link_copy: Option<(String, String)>,
    /// The child table's columns the entity maps, each once.
    pub columns: Vec<String>,
    /// Written to CreatedBy / UpdatedBy.
    pub user_id: i64,
    /// The territory of new rows, where the table has one.
    pub secterr: i64,
    /// New child rows take their ids from `eware_get_identity_id`
    /// rather than an IDENTITY.
    pub allocate: bool,
    /// Likewise for new link rows.
    pub link_allocate: bool,
}

/// A column of the entity's scan read from a child: `name` is how the
/// scan and the mapping call it (`Phone[Business].Phon_Number`).
#[derive(Debug, Clone)]
pub struct ChildColumn {
    pub name: String,
    pub column: String,
    pub child: Arc<Child>,
}

impl Child {
    /// `l`'s conditions naming entity row `record` (an SQL expression).
    fn link_match(&self, d: &Dialect, p: &mut Params, l: &str, record: &str) -> String {
        let mut out = vec![format!("{} = {record}", d.col(l, &self.link_record))];
        out.extend(self.static_conds(d, p, l));
        out.join(" AND ")
    }

    /// `l`'s conditions other than the entity row's key.
    fn static_conds(&self, d: &Dialect, p: &mut Params, l: &str) -> Vec<String> {
        self.link_conds
            .iter()
            .map(|c| match c {
                LinkCond::Eq(col, v) => format!("{} = {}", d.col(l, col), p.push(d, v)),
                LinkCond::IsNull(col) => format!("{} IS NULL", d.col(l, col)),
            })
            .collect()
    }

    /// The live child of entity row `record`: its link id and child id,
    /// the lowest link id when several are live. An address that follows
    /// the primary-address column is the one `primary` (an SQL expression)
    /// names, when a live link joins it to the entity row.
    fn live_sql(
        &self,
        d: &Dialect,
        p: &mut Params,
        (record, primary): (&str, &str),
        cols: &str,
    ) -> String {
        let (l, c) = ("crmsync_l", "crmsync_c");
        let m = self.link_match(d, p, l, record);
        let mut conds = vec![
            m,
            format!("{} IS NULL", d.col(l, &self.link_system.deleted)),
            format!("{} IS NULL", d.col(c, &self.system.deleted)),
        ];
        if self.follows_primary {
            conds.push(format!("{} = {primary}", d.col(c, &self.key)));
        }
        d.first(
            cols,
            &format!(
                "FROM {link} {l} JOIN {child} {c} ON {ck} = {lc} WHERE {} ORDER BY {}",
                conds.join(" AND "),
                d.col(l, &self.link_key),
                link = d.table(&self.link),
                child = d.table(&self.table),
                ck = d.col(c, &self.key),
                lc = d.col(l, &self.link_child),
            ),
        )
    }

    /// The entity's primary-address column as an SQL expression: in the
    /// entity's own scan the column itself, in a write the entity row
    /// `record` (a placeholder) read.
    fn primary_of(&self, d: &Dialect, record: Option<&str>) -> String {
        let Some(primary) = self.primary.as_deref().filter(|_| self.follows_primary) else {
            return "NULL".into();
        };
        match record {
            None => (d.quote)(primary),
            Some(r) => format!(
                "(SELECT {} FROM {} WHERE {} = {r})",
                (d.quote)(primary),
                d.table(&self.parent),
                (d.quote)(&self.parent_key)
            ),
        }
    }

    /// The latest change of any of this child's link rows (deleted ones
    /// too: ending a link is a change) and of the child rows they name,
    /// for the entity row whose key is `record`.
    fn stamps(&self, d: &Dialect, p: &mut Params, record: &str) -> Vec<String> {
        let (l, c) = ("crmsync_l", "crmsync_c");
        let m = self.link_match(d, p, l, record);
        vec![
            format!(
                "(SELECT MAX({}) FROM {} {l} WHERE {m})",
                d.col(l, &self.link_system.updated_date),
                d.table(&self.link)
            ),
            format!(
                "(SELECT MAX({}) FROM {} {l} JOIN {} {c} ON {} = {} WHERE {m})",
                d.col(c, &self.system.updated_date),
                d.table(&self.link),
                d.table(&self.table),
                d.col(c, &self.key),
                d.col(l, &self.link_child)
            ),
        ]
    }

    /// Keys of entity rows whose link or child rows of this child changed
    /// between `lo` and `hi` (SQL expressions), each by its own table's
    /// change index.
    fn changed_parents(&self, d: &Dialect, p: &mut Params, lo: &str, hi: &str) -> Vec<String> {
        let (l, c) = ("crmsync_l", "crmsync_c");
        let lupd = d.col(l, &self.link_system.updated_date);
        let cupd = d.col(c, &self.system.updated_date);
        let rec = d.col(l, &self.link_record);
        let mut lconds = vec![format!("{lupd} >= {lo} AND {lupd} <= {hi}")];
        lconds.extend(self.static_conds(d, p, l));
        let mut cconds = vec![format!("{cupd} >= {lo} AND {cupd} <= {hi}")];
        cconds.extend(self.static_conds(d, p, l));
        vec![
            format!(
                "SELECT {rec} FROM {} {l} WHERE {}",
                d.table(&self.link),
                lconds.join(" AND ")
            ),
            format!(
                "SELECT {rec} FROM {} {c} JOIN {} {l} ON {} = {} WHERE {}",
                d.table(&self.table),
                d.table(&self.link),
                d.col(l, &self.link_child),
                d.col(c, &self.key),
                cconds.join(" AND ")
            ),
        ]
    }
}

/// The select-list expression of child column `cc` for the row of the
/// entity table being read (its columns unqualified).
pub fn value_sql(d: &Dialect, p: &mut Params, cc: &ChildColumn) -> String {
    let record = (d.quote)(&cc.child.parent_key);
    let primary = cc.child.primary_of(d, None);
    let col = d.col("crmsync_c", &cc.column);
    format!("({})", cc.child.live_sql(d, p, (&record, &primary), &col))
}

/// The distinct children of `columns`, in order.
fn distinct(columns: &[ChildColumn]) -> Vec<&Arc<Child>> {
    let mut out: Vec<&Arc<Child>> = Vec::new();
    for cc in columns {
        if !out.iter().any(|c| Arc::ptr_eq(c, &cc.child)) {
            out.push(&cc.child);
        }
    }
    out
}

/// The change time of the entity row read with `columns`: the latest of
/// its own change column `change` (an SQL expression) and its children's
/// link and child rows' change times.
pub fn change_sql(d: &Dialect, p: &mut Params, change: &str, columns: &[ChildColumn]) -> String {
    let mut items = vec![change.to_string()];
    for child in distinct(columns) {
        let record = (d.quote)(&child.parent_key);
        items.extend(child.stamps(d, p, &record));
    }
    d.greatest(&items)
}

/// `key IN (…)`: the entity rows that may have changed between `lo` and
/// `hi` (SQL expressions): rows whose own change column lies there, and
/// rows named by a link or child row that changed there. Each part reads
/// one table's change index, so the cost follows the number of changes.
pub fn candidates_sql(
    d: &Dialect,
    p: &mut Params,
    (table, key, change): (&TableInfo, &str, &str),
    lo: &str,
    hi: &str,
    columns: &[ChildColumn],
) -> String {
    let k = (d.quote)(key);
    let c = (d.quote)(change);
    let mut parts = vec![format!(
        "SELECT {k} FROM {} WHERE {c} >= {lo} AND {c} <= {hi}",
        d.table(table)
    )];
    for child in distinct(columns) {
        parts.extend(child.changed_parents(d, p, lo, hi));
    }
    format!("{k} IN ({})", parts.join(" UNION "))
}

/// The child writes carried by one insert or update of an entity row:
/// for each child, the values of its mapped columns that change.
#[derive(Debug, Clone)]
pub struct ChildWrite {
    pub child: Arc<Child>,
    pub set: Vec<(String, Value)>,
}

/// What remains to write after the entity rows of a batch are written:
/// the child writes of the n-th insert, and of the update of a key.
#[derive(Debug, Default)]
pub struct Pending {
    pub inserts: Vec<(usize, Vec<ChildWrite>)>,
    pub updates: Vec<(Value, Vec<ChildWrite>)>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.updates.is_empty()
    }
}

/// Splits `batch` into the writes of its own table and the child writes
/// its rows carry (columns named like a child column of the batch).
/// `None` when the batch carries no child writes.
pub fn split(batch: &WriteBatch) -> Option<(WriteBatch, Pending)> {
    if batch.children.is_empty() {
        return None;
    }
    let mut own = WriteBatch::new(batch.table.clone(), batch.key.clone());
    own.deletes = batch.deletes.clone();
    let mut pending = Pending::default();
    let take = |cols: &[(String, Assign)]| {
        let mut rest = Vec::new();
        let mut writes: Vec<ChildWrite> = Vec::new();
        for (name, a) in cols {
            match batch.children.iter().find(|c| c.name == *name) {
                Some(cc) => {
                    let v = match a {
                        Assign::Value(v) => v.clone(),
                        _ => Value::Null,
                    };
                    match writes.iter_mut().find(|w| Arc::ptr_eq(&w.child, &cc.child)) {
                        Some(w) => w.set.push((cc.column.clone(), v)),
                        None => writes.push(ChildWrite {
                            child: cc.child.clone(),
                            set: vec![(cc.column.clone(), v)],
                        }),
                    }
                }
                None => rest.push((name.clone(), a.clone())),
            }
        }
        (rest, writes)
    };
    for (i, ins) in batch.inserts.iter().enumerate() {
        let (columns, writes) = take(&ins.columns);
        own.inserts.push(Insert { columns });
        if !writes.is_empty() {
            pending.inserts.push((i, writes));
        }
    }
    for up in &batch.updates {
        let (set, writes) = take(&up.set);
        if !set.is_empty() {
            own.updates.push(Update {
                key: up.key.clone(),
                set,
            });
        }
        if !writes.is_empty() {
            pending.updates.push((up.key.clone(), writes));
        }
    }
    Some((own, pending))
}

/// One database transaction, as the child writes need it.
#[async_trait]
pub trait ChildTx: Send {
    fn dialect(&self) -> Dialect;
    async fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>>;
    /// Applies a one-table batch; the inserted keys come back.
    async fn apply(&mut self, batch: &WriteBatch) -> Result<Vec<Value>>;
}

/// Writes the child writes of `pending` (`inserted` the keys the batch's
/// inserts got) in the caller's transaction.
pub async fn write_pending(
    tx: &mut dyn ChildTx,
    pending: &Pending,
    inserted: &[Value],
) -> Result<()> {
    for (i, writes) in &pending.inserts {
        for w in writes {
            write_one(tx, &w.child, &inserted[*i], &w.set).await?;
        }
    }
    for (key, writes) in &pending.updates {
        for w in writes {
            write_one(tx, &w.child, key, &w.set).await?;
        }
    }
    Ok(())
}

/// UpdatedBy, UpdatedDate and TimeStamp of a child or link row.
fn touch(s: &System, user: i64, out: &mut Vec<(String, Assign)>) {
    if let Some(c) = &s.updated_by {
        out.push((c.clone(), Assign::Value(Value::Int(user))));
    }
    out.push((s.updated_date.clone(), Assign::Now));
    if let Some(c) = &s.timestamp {
        out.push((c.clone(), Assign::Now));
    }
}

/// The columns Sage CRM's rules give a new child or link row.
fn created(
    child: &Child,
    (s, allocate): (&System, bool),
    table: &str,
    key: &str,
    out: &mut Vec<(String, Assign)>,
) {
    if let Some(c) = &s.created_by {
        out.push((c.clone(), Assign::Value(Value::Int(child.user_id))));
    }
    if let Some(c) = &s.created_date {
        out.push((c.clone(), Assign::Now));
    }
    touch(s, child.user_id, out);
    out.push((s.deleted.clone(), Assign::Value(Value::Null)));
    if let Some(c) = &s.secterr {
        out.push((c.clone(), Assign::Value(Value::Int(child.secterr))));
    }
    if allocate {
        out.push((
            key.to_string(),
            Assign::AllocateId {
                table: table.to_string(),
            },
        ));
    }
}

fn one_update(
    table: &Arc<TableInfo>,
    key: &str,
    id: Value,
    set: Vec<(String, Assign)>,
) -> WriteBatch {
    let mut b = WriteBatch::new(table.clone(), key.to_string());
    b.updates.push(Update { key: id, set });
    b
}

/// Brings the child of entity row `record` to the values `set`:
/// a live child is updated in place, or ended when every mapped column
/// becomes NULL; without one, a child row and its link row are created.
async fn write_one(
    tx: &mut dyn ChildTx,
    child: &Child,
    record: &Value,
    set: &[(String, Value)],
) -> Result<()> {
    let d = tx.dialect();
    let mut p = Params::from(1);
    let rec = p.push(&d, record);
    let cols = format!(
        "{}, {}",
        d.col("crmsync_l", &child.link_key),
        d.col("crmsync_c", &child.key)
    );
    let primary = child.primary_of(&d, Some(&rec));
    let sql = child.live_sql(&d, &mut p, (&rec, &primary), &cols);
    let live = tx.rows(&sql, &p.values).await?.into_iter().next();
    let all_null = set.iter().all(|(_, v)| v.is_null());
    let user = child.user_id;
    match live {
        Some(ids) if ids.len() == 2 => {
            let (link_id, child_id) = (ids[0].clone(), ids[1].clone());
            let mut cleared = all_null;
            if cleared {
                let others: Vec<&String> = child
                    .columns
                    .iter()
                    .filter(|c| !set.iter().any(|(s, _)| s == *c))
                    .collect();
                if !others.is_empty() {
                    let list: Vec<String> = others.iter().map(|c| (d.quote)(c)).collect();
                    let sql = format!(
                        "SELECT {} FROM {} WHERE {} = {}",
                        list.join(", "),
                        d.table(&child.table),
                        (d.quote)(&child.key),
                        (d.param)(1)
                    );
                    let row = tx.rows(&sql, std::slice::from_ref(&child_id)).await?;
                    cleared = row.first().is_none_or(|r| r.iter().all(Value::is_null));
                }
            }
            if !cleared {
                let mut s: Vec<(String, Assign)> = set
                    .iter()
                    .map(|(c, v)| (c.clone(), Assign::Value(v.clone())))
                    .collect();
                touch(&child.system, user, &mut s);
                tx.apply(&one_update(&child.table, &child.key, child_id, s))
                    .await?;
                return Ok(());
            }
            // Ended: the link row is soft-deleted, and the child row too
            // when no other live link names it. Nothing is deleted for real.
            let mut s = vec![(
                child.link_system.deleted.clone(),
                Assign::Value(Value::Int(crate::crm::DELETED)),
            )];
            touch(&child.link_system, user, &mut s);
            tx.apply(&one_update(&child.link, &child.link_key, link_id, s))
                .await?;
            let sql = format!(
                "SELECT COUNT(*) FROM {} WHERE {} = {} AND {} IS NULL",
                d.table(&child.link),
                (d.quote)(&child.link_child),
                (d.param)(1),
                (d.quote)(&child.link_system.deleted)
            );
            let others = tx.rows(&sql, std::slice::from_ref(&child_id)).await?;
            let still_linked = others
                .first()
                .and_then(|r| r.first())
                .is_some_and(|v| !matches!(v, Value::Int(0)) && !v.is_null());
            if !still_linked {
                let mut s = vec![(
                    child.system.deleted.clone(),
                    Assign::Value(Value::Int(crate::crm::DELETED)),
                )];
                touch(&child.system, user, &mut s);
                tx.apply(&one_update(&child.table, &child.key, child_id.clone(), s))
                    .await?;
            }
            if let Some(primary) = &child.primary {
                // The entity's default address is no more.
                let sql = format!(
                    "UPDATE {} SET {pc} = NULL WHERE {} = {} AND {pc} = {}",
                    d.table(&child.parent),
                    (d.quote)(&child.parent_key),
                    (d.param)(1),
                    (d.param)(2),
                    pc = (d.quote)(primary),
                );
                tx.rows(&sql, &[record.clone(), child_id]).await?;
            }
            Ok(())
        }
        _ if all_null => Ok(()),
        _ => {
            let mut cols: Vec<(String, Assign)> = set
                .iter()
                .map(|(c, v)| (c.clone(), Assign::Value(v.clone())))
                .collect();
            created(
                child,
                (&child.system, child.allocate),
                &child.table.name,
                &child.key,
                &mut cols,
            );
            let mut b = WriteBatch::new(child.table.clone(), child.key.clone());
            b.inserts.push(Insert { columns: cols });
            let child_id = tx
                .apply(&b)
                .await?
                .into_iter()
                .next()
                .unwrap_or(Value::Null);
            let mut cols = vec![
                (child.link_record.clone(), Assign::Value(record.clone())),
                (child.link_child.clone(), Assign::Value(child_id.clone())),
            ];
            for c in &child.link_conds {
                if let LinkCond::Eq(col, v) = c {
                    cols.push((col.clone(), Assign::Value(v.clone())));
                }
            }
            if let Some((link_col, parent_col)) = &child.link_copy {
                let sql = format!(
                    "SELECT {} FROM {} WHERE {} = {}",
                    (d.quote)(parent_col),
                    d.table(&child.parent),
                    (d.quote)(&child.parent_key),
                    (d.param)(1)
                );
                let row = tx.rows(&sql, std::slice::from_ref(record)).await?;
                if let Some(v) = row.into_iter().next().and_then(|r| r.into_iter().next()) {
                    cols.push((link_col.clone(), Assign::Value(v)));
                }
            }
            created(
                child,
                (&child.link_system, child.link_allocate),
                &child.link.name,
                &child.link_key,
                &mut cols,
            );
            let mut b = WriteBatch::new(child.link.clone(), child.link_key.clone());
            b.inserts.push(Insert { columns: cols });
            tx.apply(&b).await?;
            if let Some(primary) = &child.primary {
                // A new default address, or the first address of an entity
                // without one.
                let only_empty = if child.follows_primary {
                    String::new()
                } else {
                    format!(" AND {} IS NULL", (d.quote)(primary))
                };
                let sql = format!(
                    "UPDATE {} SET {} = {} WHERE {} = {}{only_empty}",
                    d.table(&child.parent),
                    (d.quote)(primary),
                    (d.param)(2),
                    (d.quote)(&child.parent_key),
                    (d.param)(1),
                );
                tx.rows(&sql, &[record.clone(), child_id]).await?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(s: &str) -> String {
        format!("\"{s}\"")
    }

    const PG: Dialect = Dialect {
        quote,
        param: |n| format!("${n}"),
        top: false,
        greatest: true,
    };

    #[test]
    fn equal_parameters_share_one_placeholder() {
        let mut p = Params::from(3);
        assert_eq!(p.push(&PG, &Value::Int(5)), "$3");
        assert_eq!(p.push(&PG, &Value::Text("Business".into())), "$4");
        assert_eq!(p.push(&PG, &Value::Int(5)), "$3");
        assert_eq!(p.values.len(), 2);
    }

    #[test]
    fn greatest_is_a_values_list_without_greatest() {
        let ms = Dialect {
            greatest: false,
            top: true,
            ..PG
        };
        let items = ["a".to_string(), "b".to_string()];
        assert_eq!(PG.greatest(&items), "GREATEST(a, b)");
        assert_eq!(
            ms.greatest(&items),
            "(SELECT MAX(crmsync_v) FROM (VALUES (a), (b)) AS crmsync_x(crmsync_v))"
        );
        assert_eq!(ms.first("x", "FROM t"), "SELECT TOP 1 x FROM t");
        assert_eq!(PG.first("x", "FROM t"), "SELECT x FROM t LIMIT 1");
    }
}
