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
                       "schema": field.as_ref().map_or(json!({"type": "string"}), |f| schemas.field(f)),
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
        operation.insert("summary".into(), json!(summary.split(". ").next().unwrap_or_default().trim_end_matches('.')));
        operation.insert("description".into(), json!(format!("{summary}\n\ngRPC: `{PACKAGE}.{}`", route.rpc)));
        operation.insert("tags".into(), json!([route.rpc.split('.').next()]));
        if route.body.is_empty() {
            // GET/DELETE: the remaining request fields are query parameters.
            for field in input.fields().filter(|f| !params.contains(&f.name().to_owned())) {
                parameters.push(json!({"name": field.name(), "in": "query", "required": false,
                                       "schema": schemas.field(&field),
                                       "description": comment(&field.parent_file(), field.path())}));
            }
        } else {
            let schema =
                if params.is_empty() { schemas.message_ref(&input) } else { schemas.message_without(&input, &params) };
            operation.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema}}}),
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
    Ok(json!({
        "openapi": "3.0.3",
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
        let mut properties = Map::new();
        for field in message.fields().filter(|f| !skip.contains(&f.name().to_owned())) {
            let mut schema = self.field(&field);
            let doc = comment(&field.parent_file(), field.path());
            if let (Value::Object(map), false) = (&mut schema, doc.is_empty()) {
                if map.contains_key("$ref") {
                    // $ref siblings are ignored in 3.0: wrap it.
                    schema = json!({"allOf": [schema], "description": doc});
                } else {
                    map.insert("description".into(), json!(doc));
                }
            }
            properties.insert(field.name().to_owned(), schema);
        }
        let mut schema = json!({"type": "object", "properties": properties});
        let doc = comment(&message.parent_file(), message.path());
        if !doc.is_empty() {
            schema["description"] = json!(doc);
        }
        schema
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        let item = match field.kind() {
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int64", "minimum": 0})
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
            Kind::Message(m) => self.message_ref(&m),
        };
        if field.is_list() { json!({"type": "array", "items": item}) } else { item }
    }

    fn insert_error(&mut self) {
        self.map.insert(
            "Error".into(),
            json!({"type": "object", "required": ["detail"],
                   "properties": {"detail": {"type": "string", "description": "What went wrong, safe to show to users"}}}),
        );
    }
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
    use crate::grpc::access::RPCS;

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
