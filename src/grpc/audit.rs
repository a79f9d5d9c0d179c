//! `AuditService`: the audit log for admins. Served behind [`super::AccessLayer`] (admins only).

use tonic::{Request, Response, Status};

use super::caller;
use super::convert::audit_query;
use crate::domain::App;
use crate::domain::paging::{Listing, Page};
use crate::pb;
use crate::pb::audit_service_server::AuditService;

pub struct AuditApi {
    app: App,
}

impl AuditApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_logs(
        &self,
        request: Request<pb::ListAuditLogsRequest>,
    ) -> Result<Response<pb::ListAuditLogsResponse>, Status> {
        let me = caller(&request)?;
        let body = super::text::body(request)?;
        let query = audit_query(&body)?;
        let listing = Listing::audit(query.by_time());
        let (limit, offset) = (i64::from(body.limit), i64::from(body.offset));
        let page = Page::parse(listing, limit, offset, &body.page_token, body.include_total)?;
        let listed = self.app.list_audit(&me.actor(), &query, page).await?;
        Ok(Response::new(pb::ListAuditLogsResponse {
            entries: listed.rows.into_iter().map(pb::AuditLog::from).collect(),
            total: listed.total.map(|t| i32::try_from(t).unwrap_or(i32::MAX)),
            next_page_token: listed.next_page_token.unwrap_or_default(),
        }))
    }
}
