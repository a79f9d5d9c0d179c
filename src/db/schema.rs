//! The one Diesel schema for both backends, written by hand with portable SQL types.
//! It must match `migrations/postgres` and `migrations/sqlite`.

diesel::table! {
    users (id) {
        id -> Integer,
        username -> Text,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        is_active -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        last_login -> Nullable<Timestamp>,
    }
}

diesel::table! {
    user_backends (id) {
        id -> Integer,
        user_id -> Integer,
        instagram_username -> Text,
        api_base_url -> Text,
        bearer_token_encrypted -> Text,
        is_active -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        user_id -> Integer,
        created_at -> Timestamp,
        refreshed_at -> Timestamp,
        expires_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        ip_address -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        proxy_secret_sha256 -> Nullable<Text>,
    }
}

diesel::table! {
    audit_logs (id) {
        id -> BigInt,
        user_id -> Nullable<Integer>,
        actor_id -> Nullable<Integer>,
        action -> Text,
        ip_address -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        metadata -> Text,
        created_at -> Timestamp,
        /// The id the row had in the Python service's audit_logs (import-seed); NULL otherwise.
        seed_id -> Nullable<Integer>,
    }
}

diesel::table! {
    service_accounts (id) {
        id -> Integer,
        name -> Text,
        description -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        service_account_id -> Integer,
        name -> Text,
        secret_sha256 -> Text,
        scopes -> Text,
        allowed_cidrs -> Text,
        expires_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        last_used_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(api_keys -> service_accounts (service_account_id));
diesel::allow_tables_to_appear_in_same_query!(api_keys, service_accounts);

diesel::joinable!(user_backends -> users (user_id));
diesel::joinable!(sessions -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(users, user_backends, sessions, audit_logs, mfa_challenges, mfa_totp);

diesel::table! {
    login_throttles (subject, ip_address) {
        subject -> Text,
        ip_address -> Text,
        failures -> Integer,
        locked_until -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    rate_limits (key) {
        key -> Text,
        tat -> BigInt,
    }
}

diesel::table! {
    mfa_totp (user_id) {
        user_id -> Integer,
        secret_encrypted -> Text,
        confirmed_at -> Nullable<Timestamp>,
        last_used_step -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::table! {
    mfa_recovery_codes (id) {
        id -> Integer,
        user_id -> Integer,
        code_sha256 -> Text,
        created_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    mfa_challenges (token_sha256) {
        token_sha256 -> Text,
        user_id -> Integer,
        ip_address -> Text,
        password_sha256 -> Text,
        purpose -> Text,
        failures -> Integer,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        ended_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    passkeys (id) {
        id -> Integer,
        user_id -> Integer,
        credential_id -> Text,
        user_handle -> Text,
        passkey -> Text,
        name -> Text,
        created_at -> Timestamp,
        last_used_at -> Nullable<Timestamp>,
        sign_count -> BigInt,
    }
}

diesel::table! {
    passkey_ceremonies (token_sha256) {
        token_sha256 -> Text,
        purpose -> Text,
        user_id -> Nullable<Integer>,
        mfa_token_sha256 -> Nullable<Text>,
        ip_address -> Text,
        state -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
    }
}
