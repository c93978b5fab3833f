//! The validation step from config to plan: `Plan::build` and the
//! collector that gathers every problem, each naming where.

use super::connection::{connection, ConnectionKeys};
use super::entity::entity;
use super::{is_identifier, IdStrategy, Plan, Side};
use crate::config::{self, RawConfig};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything wrong with a config file, each naming where.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl ConfigErrors {
    /// Bad configuration.
    pub fn exit_code(&self) -> i32 {
        crate::exit::BAD_CONFIG
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {} problem{} in the configuration",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {p}", self.file.display())?;
        }
        Ok(())
    }
}

pub(super) struct Collector {
    pub(super) problems: Vec<String>,
}

impl Collector {
    pub(super) fn push(&mut self, at: &str, msg: impl fmt::Display) {
        if at.is_empty() {
            self.problems.push(msg.to_string());
        } else {
            self.problems.push(format!("{at}: {msg}"));
        }
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        at: &str,
        key: &str,
        value: Option<&str>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(v) = value else { return default };
        match options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(v))
        {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.push(
                    at,
                    format!("{key} = {v:?} is not one of {}", names.join(" | ")),
                );
                default
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        at: &str,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> Duration {
        let text = value.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) => d,
            Err(e) => {
                self.push(
                    at,
                    format!(
                        "{key} = {text:?} is not a duration ({e}); write e.g. \"2s\" or \"5m\""
                    ),
                );
                humantime::parse_duration(default).unwrap_or_default()
            }
        }
    }

    pub(super) fn identifier(&mut self, at: &str, key: &str, name: &str) {
        if !is_identifier(name) {
            self.push(
                at,
                format!(
                    "{key} = {name:?} is not a plain column or table name \
                     (letters, digits, _ $ # only, not starting with a digit)"
                ),
            );
        }
    }

    pub(super) fn filter(&mut self, at: &str, key: &str, sql: &Option<String>) {
        if let Some(f) = sql {
            if f.trim().is_empty() {
                self.push(
                    at,
                    format!("{key} is empty; remove it or write a predicate"),
                );
            } else if f.contains(';') || f.contains("--") || f.contains("/*") {
                self.push(
                    at,
                    format!("{key} must be a single predicate without ';' or comments"),
                );
            }
        }
    }
}

impl Plan {
    /// Validates `raw` (read from `file`) into a plan, or lists every
    /// problem found.
    pub fn build(file: &Path, raw: RawConfig) -> Result<Plan, ConfigErrors> {
        let mut c = Collector {
            problems: Vec::new(),
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let crm_conn = connection(
            &mut c,
            "[crm]",
            ConnectionKeys {
                url: &raw.crm.url,
                password_env: &raw.crm.password_env,
                password_file: &raw.crm.password_file,
                timezone: &raw.crm.timezone,
                tls: &raw.crm.tls,
                tls_ca_file: &raw.crm.tls_ca_file,
                tls_cert_file: &raw.crm.tls_cert_file,
                tls_key_file: &raw.crm.tls_key_file,
            },
            dir,
        );
        let crm_user_id = match raw.crm.user_id {
            Some(id) if i32::try_from(id).is_ok() => id,
            Some(id) => {
                c.push(
                    "[crm]",
                    format!("user_id = {id} is not a Sage CRM user id (int)"),
                );
                1
            }
            None => {
                c.push(
                    "[crm]",
                    "user_id is missing: the CRM user id written to CreatedBy/UpdatedBy",
                );
                1
            }
        };
        let id_strategy = c.choice(
            "[crm]",
            "id_strategy",
            raw.crm.id_strategy.as_deref(),
            IdStrategy::Auto,
            &[
                ("auto", IdStrategy::Auto),
                ("identity", IdStrategy::Identity),
                ("stored_procedure", IdStrategy::StoredProcedure),
            ],
        );
        let external = connection(
            &mut c,
            "[external]",
            ConnectionKeys {
                url: &raw.external.url,
                password_env: &raw.external.password_env,
                password_file: &raw.external.password_file,
                timezone: &raw.external.timezone,
                tls: &raw.external.tls,
                tls_ca_file: &raw.external.tls_ca_file,
                tls_cert_file: &raw.external.tls_cert_file,
                tls_key_file: &raw.external.tls_key_file,
            },
            dir,
        );
        let state_side = c.choice(
            "[state]",
            "side",
            raw.state.side.as_deref(),
            Side::External,
            &[("crm", Side::Crm), ("external", Side::External)],
        );
        let state_schema = raw
            .state
            .schema
            .clone()
            .unwrap_or_else(|| config::DEFAULT_STATE_SCHEMA.to_string());
        c.identifier("[state]", "schema", &state_schema);
        if raw.entities.is_empty() {
            c.push(
                "",
                "no [[entity]] is configured; add one to say what to sync",
            );
        }
        let mut names = BTreeSet::new();
        let mut entities = Vec::new();
        for (i, e) in raw.entities.iter().enumerate() {
            let at = format!("entity {:?}", e.name);
            if e.name.trim().is_empty() {
                c.push(&format!("entity {}", i + 1), "name is empty");
            } else if !names.insert(e.name.to_lowercase()) {
                c.push(
                    &at,
                    "the name is used by another entity; names must be unique",
                );
            }
            entities.push(entity(&mut c, &at, e, &raw.defaults, state_side));
        }
        super::order::check_references(&mut c, &entities);
        // Parents run before the children that reference them.
        let mut slots: Vec<Option<super::EntityPlan>> = entities.into_iter().map(Some).collect();
        let entities: Vec<super::EntityPlan> =
            super::order::run_order(&slots.iter().flatten().cloned().collect::<Vec<_>>())
                .into_iter()
                .filter_map(|i| slots[i].take())
                .collect();
        if c.problems.is_empty() {
            Ok(Plan {
                file: file.to_path_buf(),
                crm: crm_conn,
                crm_user_id,
                id_strategy,
                external,
                state_side,
                state_schema,
                entities,
            })
        } else {
            Err(ConfigErrors {
                file: file.to_path_buf(),
                problems: c.problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn build(text: &str) -> Result<Plan, ConfigErrors> {
        let raw = config::parse(Path::new("crmsync.toml"), text).unwrap();
        Plan::build(Path::new("crmsync.toml"), raw)
    }

    const GOOD: &str = r#"
[crm]
url = "postgres://sync@crm/crm"
password_env = "CRMSYNC_PLAN_TEST_PW"
user_id = 1
timezone = "Europe/London"
[external]
url = "postgres://sync@erp/erp"
[[entity]]
name = "supplier"
crm_table = "Company"
crm_link_column = "comp_supplierid"
external_table = "erp.supplier"
external_key = "supplier_id"
external_updated_column = "updated_at"
direction = "crm_to_external"
[[entity.field]]
crm = "Comp_Name"
external = "name"
"#;

    /// `GOOD` with more entities: (name, [references of its one field]).
    fn related(entities: &[(&str, &[&str])]) -> String {
        std::env::set_var("CRMSYNC_PLAN_TEST_PW", "s3cr3t-pw");
        let mut text = GOOD.split("[[entity]]").next().unwrap().to_string();
        for (name, refs) in entities {
            text.push_str(&format!(
                "[[entity]]\nname = \"{name}\"\ncrm_table = \"Person\"\n\
                 external_table = \"erp.{name}\"\nexternal_key = \"id\"\n\
                 external_updated_column = \"updated_at\"\ndirection = \"crm_to_external\"\n\
                 [[entity.field]]\ncrm = \"Pers_FirstName\"\nexternal = \"first_name\"\n"
            ));
            for (i, r) in refs.iter().enumerate() {
                text.push_str(&format!(
                    "[[entity.field]]\ncrm = \"ref{i}\"\nexternal = \"ref{i}\"\nreferences = \"{r}\"\n"
                ));
            }
        }
        text
    }

    #[test]
    fn entities_run_parents_first() {
        let plan = build(&related(&[
            ("line", &["order"]),
            ("contact", &["supplier"]),
            ("order", &["contact", "supplier"]),
            ("supplier", &[]),
            ("note", &[]),
        ]))
        .unwrap();
        let names: Vec<&str> = plan.entities.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["supplier", "contact", "order", "line", "note"]);
    }

    #[test]
    fn a_cycle_of_references_is_planned_together_after_its_parents() {
        let plan = build(&related(&[
            ("note", &["contact"]),
            ("contact", &["supplier"]),
            ("supplier", &["contact", "region"]),
            ("region", &[]),
            ("memo", &["memo"]),
        ]))
        .unwrap();
        let names: Vec<&str> = plan.entities.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["region", "contact", "supplier", "note", "memo"]);
        let cycles: Vec<Vec<&str>> = super::super::order::cycles(&plan.entities)
            .into_iter()
            .map(|c| c.iter().map(|&i| plan.entities[i].name.as_str()).collect())
            .collect();
        assert_eq!(cycles, [vec!["contact", "supplier"], vec!["memo"]]);
    }

    #[test]
    fn within_a_cycle_each_reference_that_refuses_null_finds_its_parent_first() {
        use super::super::order::order_within;
        // 0 -> 1 may be written NULL first; 1 -> 0 may not: 0 goes first.
        assert_eq!(order_within(2, &[(1, 0)]), Ok(vec![0, 1]));
        assert_eq!(order_within(3, &[(0, 2), (1, 0)]), Ok(vec![2, 0, 1]));
        // Every reference refuses NULL: nothing can go first.
        assert_eq!(order_within(2, &[(0, 1), (1, 0)]), Err(vec![0, 1]));
        assert_eq!(order_within(1, &[(0, 0)]), Err(vec![0]));
    }

    #[test]
    fn a_reference_to_no_entity_is_refused_with_a_suggestion() {
        let err = build(&related(&[("supplier", &[]), ("contact", &["supplers"])])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("references = \"supplers\" names no entity (did you mean \"supplier\"?)"),
            "{text}"
        );
    }

    #[test]
    fn a_reference_is_not_transformed() {
        let text = related(&[("supplier", &[]), ("contact", &["supplier"])]).replace(
            "references = \"supplier\"",
            "references = \"supplier\"\ntransform = \"trim\"",
        );
        let err = build(&text).unwrap_err().to_string();
        assert!(err.contains("remove transform and values"), "{err}");
    }

    #[test]
    fn good_config_derives_sage_names_and_keeps_the_password_secret() {
        std::env::set_var("CRMSYNC_PLAN_TEST_PW", "s3cr3t-pw");
        let plan = build(GOOD).unwrap();
        let e = &plan.entities[0];
        assert_eq!(e.crm_key.as_deref(), Some("Comp_CompanyId"));
        assert_eq!(e.crm_updated_column, "Comp_UpdatedDate");
        assert_eq!(e.crm_deleted_column, "Comp_Deleted");
        assert_eq!(e.settle, Duration::from_secs(2));
        assert_eq!(e.overlap, Duration::from_secs(300));
        assert_eq!(
            plan.crm.password.as_ref().unwrap().expose_secret(),
            "s3cr3t-pw"
        );
        let debug = format!("{plan:?}");
        assert!(!debug.contains("s3cr3t-pw"), "password leaked in Debug");
    }

    #[test]
    fn max_lag_is_an_entity_setting_with_a_default_and_no_value_unless_set() {
        std::env::set_var("CRMSYNC_PLAN_TEST_PW", "s3cr3t-pw");
        assert_eq!(build(GOOD).unwrap().entities[0].max_lag, None);
        let text = GOOD.replace("[[entity]]", "[defaults]\nmax_lag = \"1h\"\n[[entity]]");
        assert_eq!(
            build(&text).unwrap().entities[0].max_lag,
            Some(Duration::from_secs(3600))
        );
        let text = text.replace(
            "direction = \"crm_to_external\"",
            "direction = \"crm_to_external\"\nmax_lag = \"90s\"",
        );
        assert_eq!(
            build(&text).unwrap().entities[0].max_lag,
            Some(Duration::from_secs(90))
        );
        let bad = GOOD.replace(
            "direction = \"crm_to_external\"",
            "direction = \"crm_to_external\"\nmax_lag = \"daily\"",
        );
        let err = build(&bad).unwrap_err().to_string();
        assert!(err.contains("max_lag = \"daily\""), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_place() {
        let bad = GOOD
            .replace(
                "timezone = \"Europe/London\"",
                "timezone = \"Mars/Olympus\"",
            )
            .replace(
                "direction = \"crm_to_external\"",
                "direction = \"sideways\"",
            )
            .replace("crm = \"Comp_Name\"", "crm = \"Comp Name\"")
            .replace(
                "password_env = \"CRMSYNC_PLAN_TEST_PW\"",
                "password_env = \"CRMSYNC_PLAN_TEST_UNSET\"",
            );
        let err = build(&bad).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        assert!(text.contains("Mars/Olympus"), "{text}");
        assert!(
            text.contains("entity \"supplier\": direction = \"sideways\""),
            "{text}"
        );
        assert!(text.contains("field 1 (Comp Name)"), "{text}");
        assert!(text.contains("CRMSYNC_PLAN_TEST_UNSET"), "{text}");
        assert!(text
            .lines()
            .skip(1)
            .all(|l| l.trim_start().starts_with("crmsync.toml: ")));
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        let bad = GOOD.replace("postgres://sync@crm/crm", "postgres://sync:hunter2@crm/crm");
        let err = build(&bad).unwrap_err().to_string();
        assert!(err.contains("url contains a password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn hard_delete_into_crm_is_refused() {
        let bad = GOOD.replace(
            "direction = \"crm_to_external\"",
            "direction = \"crm_to_external\"\ndelete_into_crm = \"hard\"",
        );
        let err = build(&bad).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("soft-deleted"));
    }
}
