//! The two-way property test (random changes on both sides, some runs
//! killed mid-way) with the Sage CRM on the SQL Server stand-in and
//! crmsync's state on it. The test's own reads and writes of the CRM go
//! to the stand-in's PostgreSQL database directly, so that the property's
//! code is the one of `two_way::property`; crmsync speaks TDS.

use super::{Ids, MsEnv};
use crate::common::{connect, Env};
use crate::two_way::property::run_property;
use crate::two_way::{write_two_way_config, TwoWay};

#[test]
fn random_changes_with_the_state_on_sql_server_converge() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (env, _server) = runtime.block_on(async {
        let ms = MsEnv::new(Ids::Identity).await;
        let Some(backing) = ms.server.backing_url.clone() else {
            // A real server has no back door for the test's own writes.
            return (None, ms.server);
        };
        let crm = connect(&backing).await;
        crm.batch_execute("SET search_path = dbo").await.unwrap();
        let env = Env {
            dir: ms.dir,
            crm_url: backing,
            erp_url: ms.erp_url,
            crm,
            erp: ms.erp,
            config: ms.config,
        };
        write_two_way_config(
            &env,
            &TwoWay {
                state_side: "crm",
                ..TwoWay::default()
            },
        );
        // The CRM through TDS.
        let s = &ms.server;
        let config = std::fs::read_to_string(&env.config).unwrap();
        let crm_url = format!("url = \"{}\"", env.crm_url);
        assert!(config.contains(&crm_url));
        let config = config.replacen(
            &crm_url,
            &format!(
                "url = \"mssql://{}@{}:{}/{}\"\npassword_file = \"crm.pw\"\ntls = \"{}\"",
                s.user,
                s.host,
                s.port,
                s.database,
                s.tls()
            ),
            1,
        );
        std::fs::write(&env.config, config).unwrap();
        (Some(env), ms.server)
    });
    let Some(env) = env else { return };
    run_property(&runtime, &env, 100);
}
