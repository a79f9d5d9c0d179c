//! The test PgBouncer really switches server connections between a client's statements, which
//! breaks named prepared statements, and the driver setting the service uses with
//! DB_PREPARED_STATEMENTS=false survives it. The suites that run through PgBouncer
//! (`on_both_backends!(and_through_pgbouncer; ...)`, replicas.rs) rely on both.

use diesel::IntoSql;
use diesel::connection::CacheSize;
use diesel::sql_types::Integer;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::common::{PGBOUNCER_POOL, PgBouncer, PgTestDb};

/// Three clients on a PgBouncer with two server connections, X and Y. A holds X in a
/// transaction while B runs a statement (on Y, the only free one); C then holds Y and A lets X
/// go, so B's next statement can only run on X. A named statement prepared on Y is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_survives_a_server_switch_only_unnamed() {
    let Some(pg) = PgTestDb::create().await else { return };
    let Some(bouncer) = PgBouncer::start(&PgTestDb::server_url(), 2).await else { return };
    assert_eq!(PGBOUNCER_POOL, 2, "the suites' PgBouncer shares as few connections as this one");
    let url = bouncer.url_of(&pg.url);
    for cached in [true, false] {
        let connect = async || {
            let mut conn = AsyncPgConnection::establish(&url).await.expect("connect through PgBouncer");
            if !cached {
                conn.set_prepared_statement_cache_size(CacheSize::Disabled);
            }
            conn
        };
        let (mut a, mut b, mut c) = (connect().await, connect().await, connect().await);
        let query = |n: i32| diesel::select(n.into_sql::<Integer>());

        a.batch_execute("BEGIN; SELECT 1").await.unwrap();
        assert_eq!(query(1).get_result::<i32>(&mut b).await.unwrap(), 1, "on Y");
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        a.batch_execute("COMMIT").await.unwrap();
        let on_x = query(2).get_result::<i32>(&mut b).await;
        c.batch_execute("COMMIT").await.unwrap();

        if cached {
            let error = on_x.expect_err("a named statement prepared on Y cannot run on X").to_string();
            assert!(error.contains("prepared statement") && error.contains("does not exist"), "{error}");
        } else {
            assert_eq!(on_x.unwrap(), 2, "an unnamed statement runs on any server connection");
        }
    }
    drop(bouncer);
}

/// Under load (eight clients, two server connections) each round trip may go to either server
/// connection, also between a statement's prepare and its execution: cached named statements
/// fail there, and with the cache off not one statement does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_under_contention_need_the_cache_off() {
    let Some(pg) = PgTestDb::create().await else { return };
    let Some(bouncer) = PgBouncer::start(&PgTestDb::server_url(), PGBOUNCER_POOL).await else { return };
    let url = bouncer.url_of(&pg.url);
    for cached in [true, false] {
        let clients = (0..8).map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut conn = AsyncPgConnection::establish(&url).await.expect("connect through PgBouncer");
                if !cached {
                    conn.set_prepared_statement_cache_size(CacheSize::Disabled);
                }
                let mut failed = 0;
                for n in 0..100 {
                    match diesel::select(n.into_sql::<Integer>()).get_result::<i32>(&mut conn).await {
                        Ok(m) => assert_eq!(m, n),
                        Err(e) if e.to_string().contains("prepared statement") => failed += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                failed
            })
        });
        let mut failed = 0;
        for client in clients.collect::<Vec<_>>() {
            failed += client.await.unwrap();
        }
        if cached {
            assert!(failed > 0, "named statements never switched server connection: the fixture shares none");
        } else {
            assert_eq!(failed, 0, "statements with the cache off must not depend on the server connection");
        }
    }
}
