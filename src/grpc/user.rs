//! `UserService`: the caller's own account and admin user management. Served behind
//! [`super::AccessLayer`], which authenticates the caller (and checks admin RPCs) first.

use chrono::Utc;
use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::convert::user_id;
use super::meta::ClientIpPolicy;
use super::{caller, principal};
use crate::domain::App;
use crate::domain::paging::{Listing, Page};
use crate::domain::types::{BackendInput, NewUser, UserPatch};
use crate::pb;
use crate::pb::user_service_server::UserService;

pub struct UserApi {
    app: App,
    ips: ClientIpPolicy,
}

impl UserApi {
    pub fn new(app: App, ips: ClientIpPolicy) -> Self {
        Self { app, ips }
    }
}

fn message(text: &str) -> Response<pb::MessageResponse> {
    Response::new(pb::MessageResponse { message: text.to_owned() })
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        let me = caller(&request)?;
        let client = self.ips.client_info(&request);
        let new = NewUser::try_from(super::text::body(request)?)?;
        let user = self.app.create_user(&me.actor(), new, &client, Utc::now()).await?;
        Ok(Response::new(pb::User::from(&user)))
    }

    async fn get_me(&self, request: Request<pb::GetMeRequest>) -> Result<Response<pb::User>, Status> {
        let me = principal(&request)?;
        Ok(Response::new(pb::User::from(&self.app.me(&me))))
    }

    async fn update_my_backend(
        &self,
        request: Request<pb::UpdateMyBackendRequest>,
    ) -> Result<Response<pb::UpdateMyBackendResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let input = BackendInput::try_from(super::text::body(request)?)?;
        let backend = self.app.update_my_backend(&me, input, &client, Utc::now()).await?;
        Ok(Response::new(pb::UpdateMyBackendResponse {
            message: "Backend configuration updated successfully".to_owned(),
            backend_config: Some(pb::BackendConfigSummary::from(&backend)),
        }))
    }

    async fn change_my_password(
        &self,
        request: Request<pb::ChangeMyPasswordRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let (current, new) = (SecretString::from(body.current_password), SecretString::from(body.new_password));
        self.app.change_my_password(&me, &current, &new, &client, Utc::now()).await?;
        Ok(message("Password updated successfully"))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let me = caller(&request)?;
        let body = super::text::body(request)?;
        let (limit, offset) = (i64::from(body.limit), i64::from(body.offset));
        let page = Page::parse(Listing::Users, limit, offset, &body.page_token, body.include_total)?;
        let listed = self.app.list_users(&me.actor(), page).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: listed.rows.iter().map(pb::User::from).collect(),
            total: listed.total.map(|t| i32::try_from(t).unwrap_or(i32::MAX)),
            next_page_token: listed.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        let me = caller(&request)?;
        let id = user_id(super::text::body(request)?.id)?;
        let user = self.app.get_user(&me.actor(), id).await?;
        Ok(Response::new(pb::User::from(&user)))
    }

    async fn update_user(&self, request: Request<pb::UpdateUserRequest>) -> Result<Response<pb::User>, Status> {
        let me = caller(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let id = user_id(body.id)?;
        let patch = UserPatch::try_from(body)?;
        let user = self.app.update_user(&me.actor(), id, patch, &client, Utc::now()).await?;
        Ok(Response::new(pb::User::from(&user)))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let me = caller(&request)?;
        let client = self.ips.client_info(&request);
        let id = user_id(super::text::body(request)?.id)?;
        self.app.delete_user(&me.actor(), id, &client, Utc::now()).await?;
        Ok(message("User deleted successfully"))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let me = caller(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        let id = user_id(body.id)?;
        let new = SecretString::from(body.new_password);
        self.app.reset_password(&me.actor(), id, &new, &client, Utc::now()).await?;
        Ok(message("Password reset successfully"))
    }

    async fn list_my_sessions(
        &self,
        request: Request<pb::ListMySessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let me = principal(&request)?;
        let sessions = self.app.list_my_sessions(&me, Utc::now()).await?;
        Ok(Response::new(pb::ListSessionsResponse { sessions: sessions.iter().map(pb::Session::from).collect() }))
    }

    async fn revoke_my_session(
        &self,
        request: Request<pb::RevokeMySessionRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let me = principal(&request)?;
        let client = self.ips.client_info(&request);
        let body = super::text::body(request)?;
        self.app.revoke_my_session(&me, &body.session_id, &client, Utc::now()).await?;
        Ok(message("Session revoked"))
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<pb::RevokeUserSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let me = caller(&request)?;
        let client = self.ips.client_info(&request);
        let id = user_id(super::text::body(request)?.id)?;
        let revoked = self.app.revoke_user_sessions(&me.actor(), id, &client, Utc::now()).await?;
        Ok(Response::new(pb::RevokeSessionsResponse {
            message: "Sessions revoked".to_owned(),
            revoked: i32::try_from(revoked).unwrap_or(i32::MAX),
        }))
    }

    async fn unlock_user(
        &self,
        request: Request<pb::UnlockUserRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let me = caller(&request)?;
        let client = self.ips.client_info(&request);
        let id = user_id(super::text::body(request)?.id)?;
        self.app.unlock_user(&me.actor(), id, &client, Utc::now()).await?;
        Ok(message("Login throttling cleared"))
    }
}
