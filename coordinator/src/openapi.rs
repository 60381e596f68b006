//! The admin API described as an OpenAPI 3.0 document, written by hand and served at
//! `/openapi.json`. A test checks that its paths and methods are exactly the router's.

use serde_json::{json, Value};

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn body(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema_ref(name) } } })
}

fn ok(description: &str, name: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema_ref(name) } } })
}

fn err(description: &str) -> Value {
    ok(description, "Error")
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": { "type": "string" } })
}

/// An operation behind the admin token; adds the common error answers.
fn op(
    summary: &str,
    params: Vec<Value>,
    request: Option<Value>,
    success: (&str, Value),
    write: bool,
) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert(success.0.to_string(), success.1);
    responses.insert("401".into(), err("Missing or wrong admin token"));
    responses.insert(
        "400".into(),
        err("Invalid request, or the change would make the cluster config invalid"),
    );
    responses.insert("404".into(), err("No such object"));
    if write {
        responses.insert(
            "409".into(),
            err("The config kept changing during the write; retry"),
        );
        responses.insert(
            "503".into(),
            err("Not the leader (error.leader names it) or etcd unreachable"),
        );
    } else {
        responses.insert("503".into(), err("etcd unreachable"));
    }
    let mut o = json!({ "summary": summary, "parameters": params, "responses": responses });
    if let Some(r) = request {
        o["requestBody"] = r;
    }
    o
}

fn open_op(summary: &str, success: (&str, Value)) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert(success.0.to_string(), success.1);
    json!({ "summary": summary, "security": [], "responses": responses })
}

/// The document. Built on each call; it is small and rarely fetched.
pub fn document() -> Value {
    let id = || path_param("id", "Client key id (`ck_...`)");
    let tenant = || path_param("name", "Tenant name");
    let pool = || path_param("name", "Upstream pool name");
    let region = || path_param("region", "Region name");
    let node = || path_param("id", "Node id");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Strait coordinator admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage client keys, tenants, upstream key pools, region policies and drains of a Strait cluster; view the cluster; Prometheus service discovery. Every /v1 route except /v1/sd/prometheus needs `Authorization: Bearer <admin token>`. Writes go to the elected leader only: another coordinator answers 503 `not_leader` naming the leader."
        },
        "security": [ { "adminToken": [] } ],
        "paths": {
            "/v1/keys": {
                "post": op("Create a client key. The secret is in this response only; etcd stores its SHA-256.", vec![], Some(body("CreateKey")), ("201", ok("Created", "CreatedKey")), true),
                "get": op("List client keys (never the secrets)", vec![], None, ("200", ok("Keys", "KeyList")), false)
            },
            "/v1/keys/{id}": {
                "get": op("Show one client key", vec![id()], None, ("200", ok("Key", "Key")), false),
                "patch": op("Change a key's name, tenant, pool, limits or allowed regions (absent fields stay; \"\" clears tenant or pool; [] allows every region)", vec![id()], Some(body("UpdateKey")), ("200", ok("Updated", "Key")), true),
                "delete": op("Revoke a client key (kept, marked revoked)", vec![id()], None, ("200", ok("Revoked", "Key")), true)
            },
            "/v1/tenants": {
                "get": op("List tenants", vec![], None, ("200", ok("Tenants", "TenantList")), false)
            },
            "/v1/tenants/{name}": {
                "get": op("Show one tenant", vec![tenant()], None, ("200", ok("Tenant", "Tenant")), false),
                "put": op("Create or replace a tenant's limits and allowed regions", vec![tenant()], Some(body("TenantBody")), ("200", ok("Stored", "Tenant")), true),
                "delete": op("Delete a tenant no key refers to", vec![tenant()], None, ("200", ok("Deleted", "Tenant")), true)
            },
            "/v1/pools": {
                "get": op("List upstream pools with key ids, labels and organisations (never the keys)", vec![], None, ("200", ok("Pools", "PoolList")), false)
            },
            "/v1/pools/{name}/keys": {
                "post": op("Add an upstream key to a pool (created if missing); sealed with the KEK before it is stored", vec![pool()], Some(body("AddPoolKey")), ("201", ok("Added", "PoolKey")), true)
            },
            "/v1/pools/{name}/keys/{id}": {
                "patch": op("Move an upstream key to another organisation (null or \"\" for one of its own) without re-entering the key", vec![pool(), path_param("id", "Upstream key id (`uk_...`)")], Some(body("UpdatePoolKey")), ("200", ok("Updated", "PoolKey")), true),
                "delete": op("Remove an upstream key from a pool", vec![pool(), path_param("id", "Upstream key id (`uk_...`)")], None, ("200", ok("Removed", "PoolKey")), true)
            },
            "/v1/regions/{region}": {
                "put": op("Set a region's policy (drain flag)", vec![region()], Some(body("RegionBody")), ("200", ok("Stored", "Region")), true)
            },
            "/v1/regions/{region}/drain": {
                "post": op("Drain every node of a region", vec![region()], None, ("200", ok("Draining", "Region")), true)
            },
            "/v1/regions/{region}/undrain": {
                "post": op("Undo a region drain", vec![region()], None, ("200", ok("Serving", "Region")), true)
            },
            "/v1/nodes/{region}/{id}/drain": {
                "post": op("Drain one node", vec![region(), node()], None, ("200", ok("Draining", "NodeDrain")), true)
            },
            "/v1/nodes/{region}/{id}/undrain": {
                "post": op("Undo a node drain", vec![region(), node()], None, ("200", ok("Serving", "NodeDrain")), true)
            },
            "/v1/cluster": {
                "get": op("Regions and their live nodes: state, drain requests, upstream path health", vec![], None, ("200", ok("Cluster", "Cluster")), false)
            },
            "/v1/leader": {
                "get": op("Which coordinator leads (writes), and this one", vec![], None, ("200", ok("Leader", "Leader")), false)
            },
            "/v1/sd/prometheus": {
                "get": open_op("Prometheus HTTP service discovery: one target (the node's metrics address) per live node, labels region and node. No token.", ("200", ok("Target groups", "SdTargets")))
            },
            "/healthz": {
                "get": open_op("Liveness of this coordinator. No token.", ("200", ok("Alive", "Health")))
            },
            "/openapi.json": {
                "get": open_op("This document. No token.", ("200", json!({ "description": "OpenAPI 3.0 document", "content": { "application/json": {} } })))
            }
        },
        "components": {
            "securitySchemes": { "adminToken": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas()
        }
    })
}

fn schemas() -> Value {
    let name = json!({ "type": "string", "pattern": "^[a-z0-9_-]{1,64}$" });
    let regions = json!({ "type": "array", "items": name.clone(), "description": "Regions allowed to serve; absent or [] = every region" });
    // Wider than `name`: an operator's handle for an Anthropic organisation (its UUID or
    // a display name). Keys of one organisation share rate limits and billing.
    let org_doc = "The Anthropic organisation the key belongs to: keys of one organisation share its rate limits and billing, so nodes cool and rest them together. Absent or \"\": an organisation of its own.";
    let org =
        json!({ "type": "string", "pattern": "^[A-Za-z0-9._-]{0,64}$", "description": org_doc });
    let org_nullable = json!({ "type": "string", "nullable": true, "pattern": "^[A-Za-z0-9._-]{0,64}$", "description": org_doc });
    let org_shown = json!({ "type": "string", "description": "The key's organisation; absent: an organisation of its own" });
    let path_health = json!({
        "type": "object",
        "properties": {
            "ttfb_ms": { "type": "number", "nullable": true },
            "error_rate": { "type": "number" },
            "consecutive_failures": { "type": "integer" },
            "status": { "type": "string", "enum": ["pass", "warn", "fail"] },
            "state": { "type": "string", "enum": ["closed", "half_open", "open"], "description": "The direct upstream path's circuit breaker" },
            "ttfb_ewma_ms": { "type": "number", "nullable": true },
            "ttfb_p50_ms": { "type": "number", "nullable": true },
            "ttfb_p99_ms": { "type": "number", "nullable": true },
            "probe_rtt_ms": { "type": "number", "nullable": true }
        }
    });
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": { "type": "string", "enum": ["unauthorized", "invalid_request", "not_found", "no_route", "conflict", "not_leader", "unavailable", "internal"] },
                    "message": { "type": "string" },
                    "leader": schema_ref("CoordinatorInfo")
                }
            } }
        },
        "Limits": {
            "type": "object",
            "additionalProperties": false,
            "description": "Absent fields are unlimited",
            "properties": {
                "rpm": { "type": "integer", "minimum": 0, "description": "Requests per minute" },
                "itpm": { "type": "integer", "minimum": 0, "description": "Input tokens per minute" },
                "otpm": { "type": "integer", "minimum": 0, "description": "Output tokens per minute" },
                "concurrency": { "type": "integer", "minimum": 0 },
                "daily_tokens": { "type": "integer", "minimum": 0 }
            }
        },
        "CreateKey": {
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": name.clone(),
                "tenant": { "type": "string", "description": "Existing tenant" },
                "pool": { "type": "string", "description": "Existing upstream pool (default: the pool named default)" },
                "limits": schema_ref("Limits"),
                "allowed_regions": regions.clone()
            }
        },
        "UpdateKey": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "name": name.clone(),
                "tenant": { "type": "string", "description": "\"\" removes the tenant" },
                "pool": { "type": "string", "description": "\"\" returns to the default pool" },
                "limits": schema_ref("Limits"),
                "allowed_regions": regions.clone()
            }
        },
        "Key": {
            "type": "object",
            "required": ["id", "name", "limits", "created_at", "revoked"],
            "properties": {
                "id": { "type": "string" },
                "name": { "type": "string" },
                "tenant": { "type": "string" },
                "pool": { "type": "string" },
                "limits": schema_ref("Limits"),
                "allowed_regions": regions.clone(),
                "created_at": { "type": "string", "format": "date-time" },
                "revoked": { "type": "boolean" }
            }
        },
        "CreatedKey": {
            "allOf": [ schema_ref("Key"), {
                "type": "object",
                "required": ["key", "revision"],
                "properties": {
                    "key": { "type": "string", "description": "The client key (sk-strait-...). Shown once." },
                    "revision": { "type": "integer", "description": "etcd revision of the write" }
                }
            } ]
        },
        "KeyList": {
            "type": "object",
            "properties": { "revision": { "type": "integer" }, "keys": { "type": "array", "items": schema_ref("Key") } }
        },
        "TenantBody": {
            "type": "object",
            "additionalProperties": false,
            "properties": { "limits": schema_ref("Limits"), "allowed_regions": regions.clone() }
        },
        "Tenant": {
            "type": "object",
            "required": ["name", "limits"],
            "properties": { "name": name.clone(), "limits": schema_ref("Limits"), "allowed_regions": regions.clone() }
        },
        "TenantList": {
            "type": "object",
            "properties": { "revision": { "type": "integer" }, "tenants": { "type": "array", "items": schema_ref("Tenant") } }
        },
        "AddPoolKey": {
            "type": "object",
            "additionalProperties": false,
            "required": ["label", "key"],
            "properties": {
                "label": name.clone(),
                "key": { "type": "string", "description": "The upstream (Anthropic) API key. Never returned." },
                "org": org
            }
        },
        "UpdatePoolKey": {
            "type": "object",
            "additionalProperties": false,
            "required": ["org"],
            "properties": { "org": org_nullable }
        },
        "PoolKey": {
            "type": "object",
            "required": ["pool", "id", "label"],
            "properties": { "pool": { "type": "string" }, "id": { "type": "string" }, "label": { "type": "string" }, "org": org_shown.clone() }
        },
        "PoolList": {
            "type": "object",
            "properties": {
                "revision": { "type": "integer" },
                "pools": { "type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string" },
                        "keys": { "type": "array", "items": { "type": "object", "properties": { "id": { "type": "string" }, "label": { "type": "string" }, "org": org_shown } } }
                    }
                } }
            }
        },
        "RegionBody": {
            "type": "object",
            "additionalProperties": false,
            "required": ["draining"],
            "properties": { "draining": { "type": "boolean" } }
        },
        "Region": {
            "type": "object",
            "properties": { "region": { "type": "string" }, "draining": { "type": "boolean" } }
        },
        "NodeDrain": {
            "type": "object",
            "properties": {
                "region": { "type": "string" },
                "node": { "type": "string" },
                "draining": { "type": "boolean" },
                "registered": { "type": "boolean", "description": "A node with this id is registered now" }
            }
        },
        "Node": {
            "type": "object",
            "properties": {
                "id": { "type": "string" },
                "region": { "type": "string" },
                "state": { "type": "string", "enum": ["serving", "draining"] },
                "drain_requested": { "type": "boolean" },
                "public_addr": { "type": "string" },
                "admin_addr": { "type": "string" },
                "version": { "type": "string" },
                "started_at": { "type": "string", "format": "date-time" },
                "path": path_health
            }
        },
        "Cluster": {
            "type": "object",
            "properties": {
                "revision": { "type": "integer" },
                "leader": schema_ref("CoordinatorInfo"),
                "regions": { "type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string" },
                        "draining": { "type": "boolean" },
                        "nodes": { "type": "array", "items": schema_ref("Node") }
                    }
                } }
            }
        },
        "CoordinatorInfo": {
            "type": "object",
            "nullable": true,
            "properties": { "id": { "type": "string" }, "region": { "type": "string" }, "url": { "type": "string" } }
        },
        "Leader": {
            "type": "object",
            "properties": {
                "leader": schema_ref("CoordinatorInfo"),
                "self": schema_ref("CoordinatorInfo"),
                "is_leader": { "type": "boolean" }
            }
        },
        "SdTargets": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "targets": { "type": "array", "items": { "type": "string" } },
                    "labels": { "type": "object", "additionalProperties": { "type": "string" } }
                }
            }
        },
        "Health": {
            "type": "object",
            "properties": { "status": { "type": "string" }, "id": { "type": "string" }, "is_leader": { "type": "boolean" } }
        }
    })
}
