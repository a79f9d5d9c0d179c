//! The OpenAPI 3 document of the JSON routes, generated from the descriptor set: the same
//! `google.api.http` annotations Envoy transcodes, the same field names and JSON types
//! (proto3 JSON mapping with proto field names), and the proto comments as descriptions. Who may
//! call each RPC and what it answers come from the RPC table the server itself runs on
//! (`grpc::access::RPCS`). So the document cannot drift from the routes; `export-api` writes it
//! beside the descriptor.
//! Follows grpc-gateway's protoc-gen-openapiv2: the document is derived from the annotations.

use std::collections::BTreeMap;

use anyhow::Context;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value as PbValue,
};
use serde_json::{Map, Value, json};

use crate::grpc::access::{Access, RpcRule, rpc_rule};

mod rules;
use crate::pb;

const PACKAGE: &str = "instachatico.auth.v1";

/// One JSON route of one RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: String,
    pub path: String,
    pub body: String,
    pub rpc: String,
}

/// The gRPC path of `method` (`/package.Service/Method`): its key in the RPC table.
pub fn grpc_path(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

pub fn pool() -> anyhow::Result<DescriptorPool> {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("descriptor set does not decode")
}

/// Every (method, path) the proto annotates, additional bindings included.
pub fn routes() -> anyhow::Result<Vec<(Route, MethodDescriptor)>> {
    let pool = pool()?;
    let http = pool.get_extension_by_name("google.api.http").context("google.api.http extension missing")?;
    let mut out = Vec::new();
    for service in pool.services().filter(|s| s.package_name() == PACKAGE) {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let rpc = format!("{}.{}", service.name(), method.name());
            if let PbValue::Message(rule) = options.get_extension(&http).as_ref() {
                let mut rules = vec![rule.clone()];
                if let Some(PbValue::List(extra)) = rule.get_field_by_name("additional_bindings").as_deref() {
                    rules.extend(extra.iter().filter_map(|v| v.as_message().cloned()));
                }
                for rule in rules {
                    if let Some((verb, path)) = pattern(&rule) {
                        let body = string_field(&rule, "body");
                        out.push((Route { method: verb, path, body, rpc: rpc.clone() }, method.clone()));
                    }
                }
            }
        }
    }
    Ok(out)
}

fn string_field(message: &DynamicMessage, name: &str) -> String {
    message.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn pattern(rule: &DynamicMessage) -> Option<(String, String)> {
    ["get", "put", "post", "delete", "patch"].into_iter().find_map(|verb| {
        let path = string_field(rule, verb);
        (!path.is_empty()).then(|| (verb.to_owned(), path))
    })
}

/// The leading comment of a descriptor element, without comment markers.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> String {
    file.file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .and_then(|l| l.leading_comments.clone())
        .map(|c| c.lines().map(str::trim).collect::<Vec<_>>().join(" ").trim().to_owned())
        .unwrap_or_default()
}

fn path_params(path: &str) -> Vec<String> {
    path.split('{').skip(1).filter_map(|s| s.split('}').next()).map(str::to_owned).collect()
}

/// Builds the whole document.
pub fn document() -> anyhow::Result<Value> {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut schemas = Schemas::default();
    let mut operation_ids = std::collections::HashSet::new();
    for (route, method) in routes()? {
        let params = path_params(&route.path);
        let input = method.input();
        let mut parameters: Vec<Value> = params
            .iter()
            .map(|p| {
                let field = input.get_field_by_name(p);
                json!({"name": p, "in": "path", "required": true,
                       "schema": field.as_ref().map_or(json!({"type": "string"}), |f| schemas.request_field(f)),
                       "description": field.as_ref().map(|f| comment(&f.parent_file(), f.path())).unwrap_or_default()})
            })
            .collect();
        let mut operation = Map::new();
        let summary = comment(&method.parent_file(), method.path());
        // Additional bindings of one RPC need distinct ids.
        let base = route.rpc.replace('.', "_");
        let id = (1..)
            .map(|n| if n == 1 { base.clone() } else { format!("{base}{n}") })
            .find(|id| !operation_ids.contains(id))
            .unwrap_or(base);
        operation_ids.insert(id.clone());
        operation.insert("operationId".into(), json!(id));
        operation.insert("summary".into(), json!(first_sentence(&summary)));
        operation.insert("description".into(), json!(format!("{summary}\n\ngRPC: `{PACKAGE}.{}`", route.rpc)));
        operation.insert("tags".into(), json!([route.rpc.split('.').next()]));
        if route.body.is_empty() {
            // GET/DELETE: the remaining request fields are query parameters.
            for field in input.fields().filter(|f| !params.contains(&f.name().to_owned())) {
                parameters.push(json!({"name": field.name(), "in": "query", "required": false,
                                       "schema": schemas.request_field(&field),
                                       "description": comment(&field.parent_file(), field.path())}));
            }
        } else {
            let schema =
                if params.is_empty() { schemas.message_ref(&input) } else { schemas.message_without(&input, &params) };
            // No body reads as `{}`: required only where the message has required fields.
            let required = !rules::required(input.name()).is_empty();
            operation.insert(
                "requestBody".into(),
                json!({"required": required, "content": {"application/json": {"schema": schema}}}),
            );
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        let rule = rpc_rule(&grpc_path(&method));
        match (rule.access, rule.scope) {
            (Access::Public, _) => {}
            (Access::Service, _) => {
                operation.insert("security".into(), json!([{"api_key": []}]));
            }
            (_, Some(_)) => {
                operation.insert("security".into(), json!([{"bearer": []}, {"api_key": []}]));
            }
            (_, None) => {
                operation.insert("security".into(), json!([{"bearer": []}]));
            }
        }
        operation.insert("responses".into(), responses(rule, &method, &mut schemas));
        paths.entry(route.path.clone()).or_default().insert(route.method.clone(), Value::Object(operation));
    }
    schemas.insert_error();
    schemas.map.insert(rules::NEW_PASSWORD.into(), rules::new_password());
    schemas.map.extend(rules::unknown_field());
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "instachatico-auth JSON API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The JSON face of instachatico-auth, transcoded by Envoy from the gRPC services \
                            (proto package instachatico.auth.v1). Field names are the proto field names; \
                            ids and counts are numbers; timestamps are RFC 3339 UTC. Errors are \
                            {\"detail\": \"...\"}. Generated from the descriptor set by `instachatico-auth export-api`."
        },
        // Relative: Try-it-out calls whatever host and port served the document.
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas.map,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "The access token of a user's session (Login)."},
                "api_key": {"type": "http", "scheme": "bearer", "bearerFormat": "iak_<id>_<secret>",
                            "description": "A service account's API key; the operation's 403 reply names the scope it needs."}
            }
        }
    }))
}

/// The replies of one RPC, all from its rule: the success status, the errors every RPC may
/// give, those its access implies and its own.
fn responses(rule: &RpcRule, method: &MethodDescriptor, schemas: &mut Schemas) -> Value {
    let error = |what: &str| json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut errors = BTreeMap::from([
        (400, "Invalid request: the detail names the field"),
        (429, "Too many requests; see Retry-After"),
        (500, "Internal error"),
        (503, "Temporarily unavailable; see Retry-After"),
    ]);
    if rule.access != Access::Public {
        errors.insert(401, "Not authenticated: no valid bearer token, or its session has ended");
    }
    let forbidden = match (rule.access, rule.scope) {
        (Access::Service, Some(scope)) => Some(format!("Needs an API key with the {scope} scope")),
        (Access::Admin, Some(scope)) => Some(format!("Needs an admin's session, or an API key with the {scope} scope")),
        (Access::Admin, None) => Some("Needs an admin's session (API keys may not call this)".to_owned()),
        (Access::Session, _) => Some("Needs a user's session (API keys may not call this)".to_owned()),
        (Access::SessionOrEnrolment, _) => Some(
            "Needs a user's session, or the mfa_token of an enrolment that MFA_REQUIRED_FOR_ADMINS asks for (API keys may not call this)"
                .to_owned(),
        ),
        _ => None,
    };
    let forbidden_text;
    if let Some(text) = forbidden {
        forbidden_text = text;
        errors.insert(403, forbidden_text.as_str());
    }
    errors.extend(rule.errors.iter().map(|refusal| (refusal.http, refusal.when)));
    let mut out = Map::new();
    out.insert(
        rule.success_http.to_string(),
        json!({"description": "Success", "content": {"application/json": {"schema": schemas.message_ref(&method.output())}}}),
    );
    for (status, when) in errors {
        out.insert(status.to_string(), error(when));
    }
    Value::Object(out)
}

/// Component schemas, filled on demand.
#[derive(Default)]
struct Schemas {
    map: BTreeMap<String, Value>,
}

impl Schemas {
    fn message_ref(&mut self, message: &MessageDescriptor) -> Value {
        if message.full_name() == "google.protobuf.Timestamp" {
            return json!({"type": "string", "format": "date-time"});
        }
        // Only LoginResponse.methods: a list of strings that is absent rather than empty.
        if message.full_name() == "google.protobuf.ListValue" {
            return json!({"type": "array", "items": {"type": "string"}});
        }
        if !self.map.contains_key(message.name()) {
            // Insert a placeholder first so recursive messages terminate.
            self.map.insert(message.name().to_owned(), Value::Null);
            let schema = self.object(message, &[]);
            self.map.insert(message.name().to_owned(), schema);
        }
        json!({"$ref": format!("#/components/schemas/{}", message.name())})
    }

    /// The message's body schema without the fields bound from the path.
    fn message_without(&mut self, message: &MessageDescriptor, skip: &[String]) -> Value {
        let name = format!("{}Body", message.name());
        if !self.map.contains_key(&name) {
            let schema = self.object(message, skip);
            self.map.insert(name.clone(), schema);
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn object(&mut self, message: &MessageDescriptor, skip: &[String]) -> Value {
        let request = rules::is_request(message);
        let required = rules::required(message.name());
        let mut properties = Map::new();
        for field in message.fields().filter(|f| !skip.contains(&f.name().to_owned())) {
            let mut schema = if request { self.request_field(&field) } else { self.field(&field) };
            // proto3 JSON reads null as the field's default: an optional field may be null.
            if request && !required.contains(&field.name()) {
                schema = rules::nullable(schema);
            }
            let doc = comment(&field.parent_file(), field.path());
            if let (Value::Object(map), false) = (&mut schema, doc.is_empty()) {
                if map.contains_key("$ref") {
                    // Keeps the component's own description apart.
                    schema = json!({"allOf": [schema], "description": doc});
                } else {
                    // The field's comment, then what the rule says of it.
                    let rule = map.get("description").and_then(Value::as_str).map(|r| format!("\n\n{r}"));
                    map.insert("description".into(), json!(format!("{doc}{}", rule.unwrap_or_default())));
                }
            }
            properties.insert(field.name().to_owned(), schema);
        }
        let mut schema = json!({"type": "object", "properties": properties});
        if request {
            // A missing, empty or blank required field is refused (400). Unknown fields are
            // ignored (the transcoder's JSON parsing), except one with an empty name.
            schema["propertyNames"] = json!({"minLength": 1});
            schema["additionalProperties"] = json!({"$ref": format!("#/components/schemas/{}", rules::UNKNOWN_FIELD)});
            if !required.is_empty() {
                schema["required"] = json!(required);
            }
            rules::message_constraints(message.name(), &mut schema);
        }
        let doc = comment(&message.parent_file(), message.path());
        if !doc.is_empty() {
            schema["description"] = json!(doc);
        }
        schema
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        let item = match field.kind() {
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
            }
            // proto3 JSON prints 64-bit integers as strings.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "int64"})
            }
            Kind::Float | Kind::Double => json!({"type": "number"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(e) => {
                json!({"type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>()})
            }
            // google.protobuf.Struct prints as the JSON object it holds.
            Kind::Message(m) if m.full_name() == "google.protobuf.Struct" => {
                json!({"type": "object", "additionalProperties": true})
            }
            Kind::Message(m) => self.message_ref(&m),
        };
        if field.is_list() { json!({"type": "array", "items": item}) } else { item }
    }

    /// A field of a request: its JSON type and every rule the service checks of it.
    fn request_field(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = self.field(field);
        let rule = rules::field(field.parent_message().name(), field.name());
        let target = if field.is_list() { &mut schema["items"] } else { &mut schema };
        match rule {
            Some(rule) if rule.get("$ref").is_some() => *target = rule,
            Some(rule) => rules::merge(target, rule),
            // No string of any request may hold a control character.
            None if matches!(field.kind(), Kind::String) => rules::merge(target, rules::text()),
            None => {}
        }
        if let Some(list) = rules::list(field.parent_message().name(), field.name()) {
            rules::merge(&mut schema, list);
        }
        schema
    }

    fn insert_error(&mut self) {
        self.map.insert(
            "Error".into(),
            json!({"type": "object", "required": ["detail"],
                   "properties": {"detail": {"type": "string", "description": "What went wrong, safe to show to users"}}}),
        );
    }
}

/// The first sentence of a comment, without its full stop: "(e.g. a lost device)" does not end it.
fn first_sentence(text: &str) -> &str {
    let mut from = 0;
    while let Some(at) = text[from..].find(". ").map(|i| from + i) {
        let word = text[..at].rsplit(|c: char| c.is_whitespace() || c == '(').next().unwrap_or_default();
        if !matches!(word, "e.g" | "i.e" | "etc") {
            return &text[..at];
        }
        from = at + 2;
    }
    text.trim_end_matches('.')
}

/// Writes the descriptor set and the OpenAPI document into `dir` (Envoy reads both there).
pub fn export(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let descriptor = dir.join(DESCRIPTOR_FILE);
    std::fs::write(&descriptor, pb::FILE_DESCRIPTOR_SET)
        .with_context(|| format!("cannot write {}", descriptor.display()))?;
    let openapi = dir.join(OPENAPI_FILE);
    std::fs::write(&openapi, rendered()?).with_context(|| format!("cannot write {}", openapi.display()))?;
    Ok(())
}

/// The document as committed: pretty JSON with a final newline.
pub fn rendered() -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&document()?)? + "\n")
}

pub const DESCRIPTOR_FILE: &str = "instachatico_auth.pb";
pub const OPENAPI_FILE: &str = "openapi.json";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::password::check_policy;
    use crate::domain::validate;
    use crate::grpc::access::RPCS;

    fn property<'a>(document: &'a Value, schema: &str, field: &str) -> &'a Value {
        let schemas = &document["components"]["schemas"];
        let mut found = &schemas[schema]["properties"][field];
        assert!(found.is_object(), "{schema}.{field} undocumented");
        // A field described by a component: {"allOf": [{"$ref": ...}], "description": ...}.
        if let Some(target) = found["allOf"][0]["$ref"].as_str().or(found["$ref"].as_str()) {
            found = &schemas[target.trim_start_matches("#/components/schemas/")];
        }
        found
    }

    /// Whether `value` passes the documented string rule (pattern(s) and lengths).
    fn documented(rule: &Value, value: &str) -> bool {
        let len = value.chars().count();
        let lengths = rule["minLength"].as_u64().is_none_or(|min| len as u64 >= min)
            && rule["maxLength"].as_u64().is_none_or(|max| len as u64 <= max);
        let patterns = rule["pattern"]
            .as_str()
            .into_iter()
            .chain(rule["allOf"].as_array().into_iter().flatten().filter_map(|p| p["pattern"].as_str()));
        let mut patterns = patterns.peekable();
        assert!(patterns.peek().is_some(), "no pattern in {rule}");
        lengths && patterns.into_iter().all(|p| regex::Regex::new(p).unwrap().is_match(value))
    }

    fn no_control(value: &str) -> bool {
        !value.chars().any(char::is_control)
    }

    /// The document's limits and patterns are the validators': on values at and around every
    /// limit, the document accepts exactly what the service accepts (every request string is
    /// also refused with a control character).
    #[test]
    fn documented_rules_are_the_validators() {
        let document = document().unwrap();
        let agree = |schema: &str, field: &str, service: &dyn Fn(&str) -> bool, values: &[String]| {
            let rule = property(&document, schema, field);
            for value in values {
                let expected = no_control(value) && service(value);
                assert_eq!(documented(rule, value), expected, "{schema}.{field}: {value:?}");
            }
        };
        let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let around = |c: &str, limit: usize| {
            [limit.saturating_sub(1), limit, limit + 1].map(|n| c.repeat(n)).into_iter().collect::<Vec<_>>()
        };
        let mut names = around("a", validate::USERNAME_MIN);
        names.extend(around("b", validate::USERNAME_MAX));
        names.extend(strings(&[" alice ", "\u{3000}al.i-c_e\u{a0}", "al ice", "ålice", "alice\t", "al\0ice", ""]));
        agree("CreateUserRequest", "username", &|v| validate::username(v).is_ok(), &names);
        agree("RegisterRequest", "username", &|v| validate::username(v).is_ok(), &names);
        let local = validate::EMAIL_MAX - "@example.com".len();
        let mut emails: Vec<String> =
            [local - 1, local, local + 1].map(|n| format!("{}@example.com", "a".repeat(n))).into();
        emails.extend(strings(&[
            "a@b.co",
            " a.b+c@sub.example.org ",
            "a@b.c",
            "a@b",
            "@b.com",
            "a b@c.com",
            "a@b_c.com",
            "a@.x.com",
        ]));
        agree("CreateUserRequest", "email", &|v| validate::email(v).is_ok(), &emails);
        agree("UpdateUserRequestBody", "email", &|v| validate::email(v).is_ok(), &emails);
        let mut urls = strings(&[
            "http://localhost:4291/api/v1",
            " HTTPS://b.example ",
            "ftp://x.com",
            "http:x",
            "http://x/a b",
            "http://x\\y",
            "localhost:4291",
            "http://x.example/\u{2028}",
        ]);
        urls.push(format!("http://x.example/{}", "a".repeat(validate::URL_MAX - 17)));
        urls.push(format!("http://x.example/{}", "a".repeat(validate::URL_MAX - 16)));
        agree("UpdateMyBackendRequest", "api_base_url", &|v| validate::api_base_url(v).is_ok(), &urls);
        let mut handles = around("c", validate::INSTAGRAM_MAX);
        handles.extend(strings(&["@alice_ig", "@@a.b", " a ", "a b", "a-b", ""]));
        agree("BackendInput", "instagram_username", &|v| validate::instagram_username(v).is_ok(), &handles);
        let mut tokens = around("t", validate::BEARER_TOKEN_MAX);
        tokens.extend(strings(&["", " ", " t ", "\u{3000}"]));
        agree("BackendInput", "bearer_token", &|v| validate::bearer_token(v).is_ok(), &tokens);
        let mut passwords = around("Aa1!", 2).into_iter().map(|p| p + "xxx").collect::<Vec<_>>();
        passwords.extend(strings(&[
            "Secure_password123!",
            "Ünïcödé_1x",
            "ÜNÏCÖDÉ_1x",
            "NoSpecial123",
            "nouppercase1!",
            "NOLOWERCASE1!",
            "NoDigits!!!",
            "Aa1 aaaaaa",
            "Aa1!\taaaa",
        ]));
        passwords.extend([71, 72, 73].map(|n| format!("Aa1!{}", "x".repeat(n - 4))));
        for (schema, field) in [
            ("CreateUserRequest", "password"),
            ("RegisterRequest", "password"),
            ("ResetPasswordRequestBody", "new_password"),
            ("ChangeMyPasswordRequest", "new_password"),
        ] {
            agree(schema, field, &|v| check_policy("password", v).is_ok(), &passwords);
        }
        let codes = strings(&["123456", " 123 456 ", "12345", "1234567", "12345a", "１２３４５６", "123-456", ""]);
        for schema in ["ConfirmTotpRequest", "ReauthenticateRequest"] {
            agree(schema, "code", &|v| crate::domain::mfa::normalize_code(v).is_ok(), &codes);
        }
        let recovery =
            &document["components"]["schemas"]["VerifyMfaRequest"]["oneOf"][1]["properties"]["recovery_code"];
        for value in [
            "abcd-efgh-ijkm-npqr",
            "ABCD EFGH IJKM NPQR",
            "abcdefghijkmnpqr",
            "abcd-efgh-ijkm-npq",
            "abcd-efgh-ijkl-npqr",
        ] {
            let service = crate::domain::mfa::normalize_recovery_code(value).is_ok();
            assert_eq!(documented(recovery, value), service, "recovery_code {value:?}");
        }
        let mut accounts = around("s", validate::SERVICE_ACCOUNT_NAME_MAX);
        accounts.extend(strings(&["", " s ", "a b", "ä"]));
        agree("CreateServiceAccountRequest", "name", &|v| validate::service_account_name(v).is_ok(), &accounts);
        let mut descriptions = around("d", validate::DESCRIPTION_MAX);
        descriptions.extend(strings(&["", " d e ", "\u{3000}"]));
        descriptions.push(format!(" {} ", "é".repeat(validate::DESCRIPTION_MAX)));
        agree("CreateServiceAccountRequest", "description", &|v| validate::description(v).is_ok(), &descriptions);
        let mut keys = around("k", validate::KEY_NAME_MAX);
        keys.extend(strings(&["", " k ", "a b", "a  b", "ä"]));
        agree("CreateApiKeyRequestBody", "name", &|v| validate::key_name(v).is_ok(), &keys);
        let scopes = property(&document, "CreateApiKeyRequestBody", "scopes");
        for scope in ["introspect", "users:read", "users:write", "audit:read", " audit:read ", "admin", "Introspect"] {
            let one = [scope.to_owned()];
            assert_eq!(documented(&scopes["items"], scope), validate::scopes(&one).is_ok(), "{scope}");
        }
        for role in ["admin", "user", "ADMIN", " User ", "", "root", "admins"] {
            let rule = property(&document, "UpdateUserRequestBody", "role");
            assert_eq!(documented(rule, role), crate::model::Role::parse("role", role).is_ok(), "{role:?}");
            let rule = property(&document, "CreateUserRequest", "role");
            assert_eq!(documented(rule, role), role.is_empty() || crate::model::Role::parse("role", role).is_ok());
        }
        // Bounds of numbers, from the same constants the handlers check.
        use crate::domain::PAGE_MAX;
        use crate::domain::paging::page;
        for path in ["/api/v1/users", "/api/v1/audit-logs"] {
            let parameters = document["paths"][path]["get"]["parameters"].as_array().unwrap();
            let query = |name: &str| &parameters.iter().find(|p| p["name"] == name).unwrap()["schema"];
            assert_eq!(
                (query("limit")["minimum"].as_i64(), query("limit")["maximum"].as_i64()),
                (Some(0), Some(PAGE_MAX))
            );
            assert_eq!(query("offset")["minimum"], 0);
        }
        assert!(page(PAGE_MAX, 0).is_ok() && page(PAGE_MAX + 1, 0).is_err() && page(-1, 0).is_err());
        assert!(page(0, 0).is_ok() && page(0, -1).is_err());
        let id = &document["paths"]["/api/v1/users/{id}"]["get"]["parameters"][0]["schema"];
        assert_eq!(id["minimum"], 1);
        let grace = property(&document, "RotateApiKeyRequestBody", "grace_seconds");
        assert_eq!(grace["maximum"].as_i64(), Some(crate::domain::api_keys::ROTATION_GRACE_MAX.num_seconds()));
        let cidrs = property(&document, "CreateApiKeyRequestBody", "allowed_cidrs");
        assert_eq!(cidrs["maxItems"].as_u64(), Some(validate::CIDRS_MAX as u64));
        // The audit log's metadata is the plain JSON object the reply holds.
        let metadata = property(&document, "AuditLog", "metadata");
        assert_eq!((metadata["type"].as_str(), metadata.get("$ref")), (Some("object"), None));
    }

    #[test]
    fn summaries_are_whole_sentences() {
        assert_eq!(
            first_sentence("Ends one (e.g. a lost device); at once. More."),
            "Ends one (e.g. a lost device); at once"
        );
        let document = document().unwrap();
        let revoke = &document["paths"]["/api/v1/users/me/sessions/{session_id}"]["delete"]["summary"];
        assert_eq!(revoke, "Ends one of the caller's sessions (e.g. a lost device); its tokens stop working at once");
    }

    /// The document says what the server does: an operation is open to anyone exactly when the
    /// access layer lets anyone call it, documents 403 for every admin RPC, and answers with
    /// the success status the layer hints.
    #[test]
    fn documented_access_and_statuses_are_the_rpc_tables() {
        let document = document().unwrap();
        let routes = routes().unwrap();
        assert!(!routes.is_empty());
        for (route, method) in routes {
            let path = grpc_path(&method);
            let rule = RPCS.iter().find(|(p, _)| *p == path).map(|(_, r)| r);
            let rule = rule.unwrap_or_else(|| panic!("{path} has a JSON route but no rule"));
            let operation = &document["paths"][&route.path][&route.method];
            let what = format!("{} {} ({path})", route.method, route.path);
            assert_eq!(operation.get("security").is_none(), rule.access == Access::Public, "{what}: security");
            let responses = operation["responses"].as_object().unwrap();
            let statuses: Vec<u16> = responses.keys().map(|k| k.parse().unwrap()).collect();
            let successes: Vec<u16> = statuses.iter().copied().filter(|s| *s < 300).collect();
            assert_eq!(successes, [rule.success_http], "{what}: success");
            let unauthenticated = rule.access != Access::Public || rule.errors.iter().any(|e| e.http == 401);
            assert_eq!(statuses.contains(&401), unauthenticated, "{what}: 401");
            if matches!(rule.access, Access::Admin | Access::Service | Access::Session | Access::SessionOrEnrolment) {
                assert!(statuses.contains(&403), "{what}: 403 undocumented");
            }
            if let Some(scope) = rule.scope {
                assert!(responses["403"]["description"].as_str().unwrap().contains(scope.as_str()), "{what}: scope");
            }
            for refusal in rule.errors {
                assert_eq!(responses[&refusal.http.to_string()]["description"], refusal.when, "{what}");
            }
        }
    }
}
