//! Sage CRM conventions: entity prefixes and keys, system columns,
//! soft delete and territories.

/// A standard Sage CRM entity table.
#[derive(Debug, Clone, Copy)]
pub struct KnownTable {
    pub table: &'static str,
    pub prefix: &'static str,
    pub key: &'static str,
}

pub const KNOWN_TABLES: &[KnownTable] = &[
    KnownTable {
        table: "Company",
        prefix: "Comp_",
        key: "Comp_CompanyId",
    },
    KnownTable {
        table: "Person",
        prefix: "Pers_",
        key: "Pers_PersonId",
    },
    KnownTable {
        table: "Address",
        prefix: "Addr_",
        key: "Addr_AddressId",
    },
    KnownTable {
        table: "Address_Link",
        prefix: "AdLi_",
        key: "AdLi_AddressLinkId",
    },
    KnownTable {
        table: "Opportunity",
        prefix: "Oppo_",
        key: "Oppo_OpportunityId",
    },
    KnownTable {
        table: "Cases",
        prefix: "Case_",
        key: "Case_CaseId",
    },
    KnownTable {
        table: "Territories",
        prefix: "Terr_",
        key: "Terr_TerritoryID",
    },
];

/// The standard entity named `table` (case-insensitively), if it is one.
pub fn known_table(table: &str) -> Option<&'static KnownTable> {
    KNOWN_TABLES
        .iter()
        .find(|k| k.table.eq_ignore_ascii_case(table))
}

/// The system columns every Sage CRM entity table carries, by prefix.
#[derive(Debug, Clone)]
pub struct SystemColumns {
    pub created_by: String,
    pub created_date: String,
    pub updated_by: String,
    pub updated_date: String,
    pub timestamp: String,
    pub deleted: String,
    pub secterr: String,
}

impl SystemColumns {
    pub fn for_prefix(prefix: &str) -> SystemColumns {
        SystemColumns {
            created_by: format!("{prefix}CreatedBy"),
            created_date: format!("{prefix}CreatedDate"),
            updated_by: format!("{prefix}UpdatedBy"),
            updated_date: format!("{prefix}UpdatedDate"),
            timestamp: format!("{prefix}TimeStamp"),
            deleted: format!("{prefix}Deleted"),
            secterr: format!("{prefix}SecTerr"),
        }
    }
}

/// Columns crmsync must never write: triggers maintain them.
pub const NEVER_WRITE: &[&str] = &["CRMEmailPhoneData"];

/// Sage CRM's value of `xxx_Deleted` for a deleted row (NULL is live).
pub const DELETED: i64 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_tables_match_case_insensitively() {
        assert_eq!(known_table("company").unwrap().key, "Comp_CompanyId");
        assert_eq!(known_table("ADDRESS_LINK").unwrap().prefix, "AdLi_");
        assert!(known_table("Supplier").is_none());
        assert_eq!(SystemColumns::for_prefix("Comp_").secterr, "Comp_SecTerr");
    }
}

/// Sage CRM's write rules (docs/design.md section 7), as column assignments.
pub mod write {
    use crate::endpoint::Assign;
    use crate::plan::IdStrategy;
    use crate::schema::BoundEntity;
    use crate::value::Value;

    fn push(out: &mut Vec<(String, Assign)>, col: &Option<String>, a: Assign) {
        if let Some(c) = col {
            if !out.iter().any(|(n, _)| n == c) {
                out.push((c.clone(), a));
            }
        }
    }

    /// UpdatedBy = the sync user; UpdatedDate = TimeStamp = the server's
    /// clock. Added to every update and soft delete.
    pub fn touch(e: &BoundEntity, user_id: i64, out: &mut Vec<(String, Assign)>) {
        push(
            out,
            &e.crm_system.updated_by,
            Assign::Value(Value::Int(user_id)),
        );
        push(out, &e.crm_system.updated_date, Assign::Now);
        push(out, &e.crm_system.timestamp, Assign::Now);
    }

    /// A soft delete: Deleted = 1 plus the update columns.
    pub fn soft_delete(e: &BoundEntity, user_id: i64) -> Vec<(String, Assign)> {
        let mut out = Vec::new();
        if let Some(d) = &e.side.crm.deleted {
            out.push((d.name.clone(), Assign::Value(Value::Int(super::DELETED))));
        }
        touch(e, user_id, &mut out);
        out
    }

    /// Completes an insert's `columns` (mapped fields already in): the
    /// constant defaults, the territory, the system columns, Deleted NULL
    /// and the id.
    pub fn complete_insert(
        e: &BoundEntity,
        user_id: i64,
        strategy: IdStrategy,
        out: &mut Vec<(String, Assign)>,
    ) {
        for (c, v) in &e.side.crm.defaults {
            push(out, &Some(c.clone()), Assign::Value(v.clone()));
        }
        push(
            out,
            &e.crm_system.secterr,
            Assign::Value(Value::Int(e.plan.secterr)),
        );
        push(
            out,
            &e.crm_system.created_by,
            Assign::Value(Value::Int(user_id)),
        );
        push(out, &e.crm_system.created_date, Assign::Now);
        touch(e, user_id, out);
        if let Some(d) = &e.side.crm.deleted {
            push(out, &Some(d.name.clone()), Assign::Value(Value::Null));
        }
        if id_strategy(e, strategy) == IdStrategy::StoredProcedure {
            push(
                out,
                &Some(e.side.crm.key.name.clone()),
                Assign::AllocateId {
                    table: e.plan.crm_table.name.clone(),
                },
            );
        }
    }

    /// `auto` resolved: IDENTITY (or a default) on the key column means
    /// the database assigns ids; otherwise `eware_get_identity_id`.
    pub fn id_strategy(e: &BoundEntity, strategy: IdStrategy) -> IdStrategy {
        match strategy {
            IdStrategy::Auto if e.side.crm.key.identity || e.side.crm.key.has_default => {
                IdStrategy::Identity
            }
            IdStrategy::Auto => IdStrategy::StoredProcedure,
            s => s,
        }
    }
}
