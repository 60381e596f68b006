//! What the dashboard can change, and how: every action is an admin API call (method,
//! path, JSON body), made in process through this coordinator's own router with the
//! admin token; when this coordinator is a standby the API answers `not_leader` and
//! the call is sent once to the leader it names, exactly as the CLI does.

use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};
use strait_node::schema::valid_name;
use tower::ServiceExt;

/// The fields of every action form (all optional; each action reads its own).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ActionForm {
    pub op: String,
    pub region: String,
    pub node: String,
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub rpm: String,
    pub itpm: String,
    pub otpm: String,
    pub concurrency: String,
    pub daily_tokens: String,
    pub csrf: String,
}

/// A validated action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    DrainNode {
        region: String,
        node: String,
    },
    UndrainNode {
        region: String,
        node: String,
    },
    DrainRegion {
        region: String,
    },
    UndrainRegion {
        region: String,
    },
    CreateKey {
        name: String,
        tenant: Option<String>,
        limits: Value,
    },
    RevokeKey {
        id: String,
    },
    KeyLimits {
        id: String,
        limits: Value,
    },
    TenantLimits {
        name: String,
        limits: Value,
    },
}

fn name(field: &str, v: &str) -> Result<String, String> {
    let v = v.trim();
    if valid_name(v) {
        Ok(v.to_string())
    } else {
        Err(format!(
            "{field}: use 1 to 64 lowercase letters, digits, '-' or '_'"
        ))
    }
}

impl ActionForm {
    /// The limits fields as the API's `limits` object (empty fields: unlimited).
    fn limits(&self) -> Result<Value, String> {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("rpm", &self.rpm),
            ("itpm", &self.itpm),
            ("otpm", &self.otpm),
            ("concurrency", &self.concurrency),
            ("daily_tokens", &self.daily_tokens),
        ] {
            let v = v.trim();
            if !v.is_empty() {
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("{k}: a whole number, or empty for unlimited"))?;
                m.insert(k.to_string(), json!(n));
            }
        }
        Ok(Value::Object(m))
    }

    pub fn action(&self) -> Result<Action, String> {
        Ok(match self.op.as_str() {
            "drain_node" | "undrain_node" => {
                let region = name("region", &self.region)?;
                let node = name("node", &self.node)?;
                if self.op == "drain_node" {
                    Action::DrainNode { region, node }
                } else {
                    Action::UndrainNode { region, node }
                }
            }
            "drain_region" => Action::DrainRegion {
                region: name("region", &self.region)?,
            },
            "undrain_region" => Action::UndrainRegion {
                region: name("region", &self.region)?,
            },
            "create_key" => Action::CreateKey {
                name: name("name", &self.name)?,
                tenant: match self.tenant.trim() {
                    "" => None,
                    t => Some(name("tenant", t)?),
                },
                limits: self.limits()?,
            },
            "revoke_key" => Action::RevokeKey {
                id: name("key id", &self.id)?,
            },
            "key_limits" => Action::KeyLimits {
                id: name("key id", &self.id)?,
                limits: self.limits()?,
            },
            "tenant_limits" => Action::TenantLimits {
                name: name("tenant", &self.name)?,
                limits: self.limits()?,
            },
            other => return Err(format!("unknown action {other:?}")),
        })
    }
}

impl Action {
    /// One line for the confirmation page and the audit log.
    pub fn describe(&self) -> String {
        match self {
            Action::DrainNode { region, node } => format!("drain node {node} in region {region}"),
            Action::UndrainNode { region, node } => {
                format!("undrain node {node} in region {region}")
            }
            Action::DrainRegion { region } => format!("drain region {region} (every node in it)"),
            Action::UndrainRegion { region } => format!("undrain region {region}"),
            Action::CreateKey {
                name,
                tenant,
                limits,
            } => format!(
                "create client key {name}{} with limits {limits}",
                tenant
                    .as_ref()
                    .map(|t| format!(" in tenant {t}"))
                    .unwrap_or_default()
            ),
            Action::RevokeKey { id } => format!("revoke client key {id}"),
            Action::KeyLimits { id, limits } => format!("set the limits of key {id} to {limits}"),
            Action::TenantLimits { name, limits } => {
                format!("set the limits of tenant {name} to {limits}")
            }
        }
    }

    /// The admin API call this action is. `tenant_regions`: a tenant's current
    /// region policy, kept by a limits change (`PUT` replaces the document).
    pub fn request(&self, tenant_regions: Option<Vec<String>>) -> (Method, String, Option<Value>) {
        match self {
            Action::DrainNode { region, node } => (
                Method::POST,
                format!("/v1/nodes/{region}/{node}/drain"),
                None,
            ),
            Action::UndrainNode { region, node } => (
                Method::POST,
                format!("/v1/nodes/{region}/{node}/undrain"),
                None,
            ),
            Action::DrainRegion { region } => {
                (Method::POST, format!("/v1/regions/{region}/drain"), None)
            }
            Action::UndrainRegion { region } => {
                (Method::POST, format!("/v1/regions/{region}/undrain"), None)
            }
            Action::CreateKey {
                name,
                tenant,
                limits,
            } => {
                let mut body = json!({"name": name, "limits": limits});
                if let Some(t) = tenant {
                    body["tenant"] = json!(t);
                }
                (Method::POST, "/v1/keys".to_string(), Some(body))
            }
            Action::RevokeKey { id } => (Method::DELETE, format!("/v1/keys/{id}"), None),
            Action::KeyLimits { id, limits } => (
                Method::PATCH,
                format!("/v1/keys/{id}"),
                Some(json!({ "limits": limits })),
            ),
            Action::TenantLimits { name, limits } => (
                Method::PUT,
                format!("/v1/tenants/{name}"),
                Some(json!({ "limits": limits, "allowed_regions": tenant_regions })),
            ),
        }
    }
}

/// Runs admin API calls here, or at the leader.
pub struct Executor {
    api: Router,
    token: String,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The API's answer: status and JSON, and which coordinator gave it.
pub struct Outcome {
    pub status: StatusCode,
    pub json: Value,
    pub at: String,
}

impl Outcome {
    pub fn message(&self) -> String {
        self.json["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("answered {}", self.status))
    }
}

impl Executor {
    pub fn new(api: Router, token: &str) -> Arc<Executor> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Arc::new(Executor {
            api,
            token: token.to_string(),
            http: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// Calls the API in process; a `not_leader` answer naming a leader is sent there.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Outcome {
        let bytes = body
            .as_ref()
            .map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()))
            .unwrap_or_default();
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes.clone()))
            .expect("a valid request");
        let local = match self.api.clone().oneshot(req).await {
            Ok(resp) => {
                let status = resp.status();
                let data = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Outcome {
                    status,
                    json: serde_json::from_slice(&data).unwrap_or(Value::Null),
                    at: "this coordinator".to_string(),
                }
            }
            Err(never) => match never {},
        };
        let leader = (local.json["error"]["type"] == "not_leader")
            .then(|| local.json["error"]["leader"]["url"].as_str())
            .flatten()
            .map(|u| u.trim_end_matches('/').to_string());
        let Some(leader) = leader else {
            return local;
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("{leader}{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .expect("a valid request");
        let sent = tokio::time::timeout(std::time::Duration::from_secs(10), self.http.request(req));
        match sent.await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                let data = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Outcome {
                    status,
                    json: serde_json::from_slice(&data).unwrap_or(Value::Null),
                    at: format!("the leader at {leader}"),
                }
            }
            Ok(Err(e)) => Outcome {
                status: StatusCode::BAD_GATEWAY,
                json: json!({"error": {"message": format!("the leader at {leader} is unreachable: {e}")}}),
                at: format!("the leader at {leader}"),
            },
            Err(_) => Outcome {
                status: StatusCode::GATEWAY_TIMEOUT,
                json: json!({"error": {"message": format!("the leader at {leader} did not answer within 10 s")}}),
                at: format!("the leader at {leader}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_become_api_calls_and_bad_fields_are_named() {
        let f = ActionForm {
            op: "drain_node".into(),
            region: "r1".into(),
            node: "n-1".into(),
            ..Default::default()
        };
        let a = f.action().unwrap();
        assert_eq!(
            a.request(None),
            (Method::POST, "/v1/nodes/r1/n-1/drain".to_string(), None)
        );
        let f = ActionForm {
            op: "create_key".into(),
            name: "alice".into(),
            rpm: "60".into(),
            ..Default::default()
        };
        let (m, p, b) = f.action().unwrap().request(None);
        assert_eq!((m, p.as_str()), (Method::POST, "/v1/keys"));
        assert_eq!(b.unwrap(), json!({"name": "alice", "limits": {"rpm": 60}}));
        let bad = ActionForm {
            op: "key_limits".into(),
            id: "ck_1".into(),
            rpm: "lots".into(),
            ..Default::default()
        };
        assert!(bad.action().unwrap_err().contains("rpm"));
        let bad = ActionForm {
            op: "drain_node".into(),
            region: "../v1/keys".into(),
            node: "x".into(),
            ..Default::default()
        };
        assert!(bad.action().unwrap_err().contains("region"));
        assert!(ActionForm::default().action().is_err());
    }
}
