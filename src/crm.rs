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

/// Sage CRM's tables of a company's or person's phones, e-mails and
/// addresses: rows of their own, joined to the entity row through a link
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    Phone,
    Email,
    Address,
}

/// One child table and its link table, as Sage CRM names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildTable {
    pub kind: ChildKind,
    pub table: &'static str,
    pub prefix: &'static str,
    pub key: &'static str,
    pub link_table: &'static str,
    pub link_prefix: &'static str,
    pub link_key: &'static str,
    /// The link column naming the child row.
    pub link_child: &'static str,
    /// The link column holding the type code.
    pub link_type: &'static str,
}

pub const CHILD_TABLES: &[ChildTable] = &[
    ChildTable {
        kind: ChildKind::Phone,
        table: "Phone",
        prefix: "Phon_",
        key: "Phon_PhoneId",
        link_table: "PhoneLink",
        link_prefix: "PLink_",
        link_key: "PLink_LinkID",
        link_child: "PLink_PhoneId",
        link_type: "PLink_Type",
    },
    ChildTable {
        kind: ChildKind::Email,
        table: "Email",
        prefix: "Emai_",
        key: "Emai_EmailId",
        link_table: "EmailLink",
        link_prefix: "ELink_",
        link_key: "ELink_LinkID",
        link_child: "ELink_EmailId",
        link_type: "ELink_Type",
    },
    ChildTable {
        kind: ChildKind::Address,
        table: "Address",
        prefix: "Addr_",
        key: "Addr_AddressId",
        link_table: "Address_Link",
        link_prefix: "AdLi_",
        link_key: "AdLi_AddressLinkId",
        link_child: "AdLi_AddressId",
        link_type: "AdLi_Type",
    },
];

/// The child table named `table` (case-insensitively), if it is one.
pub fn child_table(table: &str) -> Option<&'static ChildTable> {
    CHILD_TABLES
        .iter()
        .find(|k| k.table.eq_ignore_ascii_case(table))
}

/// The bracket of `Address[primary]`: the address the entity's
/// primary-address column names, not an `AdLi_Type` code.
pub const PRIMARY: &str = "primary";

/// The `Custom_Tables.Bord_TableId` of the entities that own phones,
/// e-mails and addresses, as a standard install numbers them; used when the
/// database has no `Custom_Tables`.
pub fn default_entity_id(table: &str) -> Option<i64> {
    match table.to_ascii_lowercase().as_str() {
        "company" => Some(5),
        "person" => Some(13),
        _ => None,
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
