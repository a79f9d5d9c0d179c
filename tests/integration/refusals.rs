//! Refusals in their own words and the same on both databases: out-of-range audit times, and
//! each RPC's wording when the password-hashing pool sheds work (issue 11, points 12 and 13).

use chrono::Utc;
use instachatico_auth::domain::types::{Actor, ClientInfo, NewUser, Role};
use instachatico_auth::error::Error;
use instachatico_auth::pb;
use instachatico_auth::pb::audit_service_client::AuditServiceClient;
use secrecy::SecretString;
use tonic::Code;

use crate::common::{Options, TestServer, USER_PASSWORD, authed, expect_code};

fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

/// Timestamps outside google.protobuf.Timestamp's range (or with bad nanos) are a 400 on both
/// databases; the edges of the range give the same answer on both.
async fn audit_times_out_of_range_are_refused(s: TestServer) {
    let admin = s.admin_token().await;
    let mut audit = AuditServiceClient::new(s.channel().await);
    for (seconds, nanos) in [(253_402_300_800, 0), (-62_135_596_801, 0), (0, -5), (0, 1_000_000_000)] {
        for (since, until) in [(at(seconds, nanos), None), (None, at(seconds, nanos))] {
            let request = pb::ListAuditLogsRequest { since, until, ..Default::default() };
            let message = expect_code(audit.list_audit_logs(authed(&admin, request)).await, Code::InvalidArgument);
            assert!(message.contains("must be a time between 0001-01-01 and 9999-12-31"), "{message}");
        }
    }
    let total = |r: pb::ListAuditLogsRequest| {
        let (mut audit, admin) = (audit.clone(), admin.clone());
        let r = pb::ListAuditLogsRequest { include_total: true, ..r };
        async move { audit.list_audit_logs(authed(&admin, r)).await.unwrap().into_inner().total.expect("counted") }
    };
    let all = total(pb::ListAuditLogsRequest::default()).await;
    assert!(all > 0);
    let latest = pb::ListAuditLogsRequest { since: at(253_402_300_799, 999_999_999), ..Default::default() };
    assert_eq!(total(latest).await, 0, "nothing is newer than the end of the range");
    let earliest = pb::ListAuditLogsRequest { since: at(-62_135_596_800, 0), ..Default::default() };
    assert_eq!(total(earliest).await, all, "everything is newer than the start of the range");
    let before = pb::ListAuditLogsRequest { until: at(-62_135_596_800, 0), ..Default::default() };
    assert_eq!(total(before).await, 0);
}

/// With the hashing pool shedding everything, each operation refuses in its own words.
async fn shed_work_is_refused_in_each_operations_words(s: TestServer) {
    let options = Options::default()
        .arg("admin-username", "")
        .arg("bcrypt-max-wait-ms", "100")
        // One hash (about a second at cost 14) is longer than the longest allowed wait.
        .arg("bcrypt-cost", "14")
        .arg("allow-registration", "true");
    let backend = s.backend;
    s.stop().await;
    let Some(s) = TestServer::start_with(backend, options).await else { return };

    let login = pb::LoginRequest { username: "nobody".into(), password: USER_PASSWORD.into() };
    let message = expect_code(s.auth().await.login(login).await, Code::Unavailable);
    assert_eq!(message, "Too many sign-in attempts are in progress; retry shortly");

    let register = pb::RegisterRequest {
        username: "newbie".into(),
        email: "newbie@example.com".into(),
        password: USER_PASSWORD.into(),
    };
    let message = expect_code(s.auth().await.register(register).await, Code::Unavailable);
    assert_eq!(message, "Too many accounts are being created at once; retry shortly");

    let app = s.app();
    let new = NewUser {
        username: "carol".into(),
        email: "carol@example.com".into(),
        password: SecretString::from(USER_PASSWORD),
        role: Role::User,
        backend: None,
    };
    let cli = Actor::System("cli");
    match app.create_user(&cli, new, &ClientInfo::default(), Utc::now()).await {
        Err(Error::Overloaded { message, .. }) => {
            assert_eq!(message, "Too many accounts are being created at once; retry shortly");
        }
        other => panic!("{other:?}"),
    }
    let password = SecretString::from("Another_pass123!");
    match app
        .reset_password(&cli, instachatico_auth::model::UserId(1), &password, &ClientInfo::default(), Utc::now())
        .await
    {
        Err(Error::Overloaded { message, .. }) => {
            assert_eq!(message, "Too many password resets are in progress; retry shortly");
        }
        other => panic!("{other:?}"),
    }
}

crate::on_both_backends!(audit_times_out_of_range_are_refused, shed_work_is_refused_in_each_operations_words);
