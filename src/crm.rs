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
