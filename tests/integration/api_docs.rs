//! The files Envoy reads must match the binary: a stale descriptor silently 404s routes, a
//! stale OpenAPI document lies. Regenerate both with `cargo run -- export-api`.

use instachatico_auth::openapi;

fn committed(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy").join(name)).unwrap()
}

#[test]
fn committed_descriptor_is_current() {
    assert!(
        committed(openapi::DESCRIPTOR_FILE) == instachatico_auth::pb::FILE_DESCRIPTOR_SET,
        "envoy/{} is stale: run `cargo run -- export-api` and commit it",
        openapi::DESCRIPTOR_FILE
    );
}

#[test]
fn committed_openapi_is_current() {
    let generated = openapi::rendered().unwrap();
    assert!(
        committed(openapi::OPENAPI_FILE) == generated.as_bytes(),
        "envoy/{} is stale: run `cargo run -- export-api` and commit it",
        openapi::OPENAPI_FILE
    );
}

#[test]
fn every_annotated_route_is_documented_and_known_to_envoy() {
    let envoy = String::from_utf8(committed("envoy.yaml")).unwrap();
    // The patterns that turn a transcoder 404 on a known path into 405.
    let patterns: Vec<regex::Regex> = envoy
        .lines()
        .filter(|l| l.contains("header_filter") && l.contains("\":path\""))
        .map(|l| {
            let raw = l.split("regex: \"").nth(1).unwrap().split('"').next().unwrap();
            regex::Regex::new(&raw.replace("\\\\", "\\")).unwrap()
        })
        .collect();
    assert!(patterns.len() >= 4, "405 patterns not found in envoy.yaml");
    // The 405 mappers, in order: their path patterns and the Allow they send.
    let mut mappers: Vec<(Vec<regex::Regex>, String)> = Vec::new();
    let mut current = Vec::new();
    for line in envoy.lines() {
        if line.contains("header_filter") && line.contains("\":path\"") {
            let raw = line.split("regex: \"").nth(1).unwrap().split('"').next().unwrap();
            current.push(regex::Regex::new(&raw.replace("\\\\", "\\")).unwrap());
        } else if line.contains("headers_to_add: [{ header: { key: allow, value: \"") {
            let allow = line.split("value: \"").nth(1).unwrap().split('"').next().unwrap();
            mappers.push((std::mem::take(&mut current), allow.to_owned()));
        }
    }
    assert!(current.is_empty(), "405 patterns without an Allow header in envoy.yaml");
    let document = openapi::document().unwrap();
    let routes = openapi::routes().unwrap();
    assert_eq!(routes.len(), 44, "routes: {routes:?}");
    for (route, _) in &routes {
        let concrete = route
            .path
            .replace("{id}", "123")
            .replace("{session_id}", "abc-123")
            .replace("{service_account_id}", "7")
            .replace("{key_id}", "0123456789abcdef");
        assert!(
            patterns.iter().any(|p| p.is_match(&concrete)),
            "{} {} is not covered by envoy.yaml's 405 patterns",
            route.method,
            route.path
        );
        // The first mapper that matches names exactly the methods documented for the path.
        let (_, allow) = mappers
            .iter()
            .find(|(patterns, _)| patterns.iter().any(|p| p.is_match(&concrete)))
            .unwrap_or_else(|| panic!("{concrete}: no 405 mapper"));
        let mut documented: Vec<String> =
            document["paths"][&route.path].as_object().unwrap().keys().map(|m| m.to_uppercase()).collect();
        let order = ["GET", "PUT", "POST", "PATCH", "DELETE"];
        documented.sort_by_key(|m| order.iter().position(|o| o == m));
        assert_eq!(*allow, documented.join(", "), "Allow of {concrete}");
        assert!(
            concrete.starts_with("/api/v1/") || concrete == "/health" || concrete.starts_with("/.well-known/"),
            "{} is outside Envoy's JSON routes",
            route.path
        );
        assert!(
            document["paths"][&route.path][&route.method].is_object(),
            "{} {} undocumented",
            route.method,
            route.path
        );
    }
    let documented: usize =
        document["paths"].as_object().unwrap().values().map(|ops| ops.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len(), "every documented route is an annotated RPC");
}
