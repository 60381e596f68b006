//! The node's modules in layers: imports flow down only, and no two top-level
//! modules import each other (checked on the source by `strait_chaos::layers`).
//! When this fails, move the type down to where both sides can see it; do not widen
//! the table.

use strait_chaos::layers::{check, Layer};

/// Lowest first; a module may import its own layer and those below it.
const LAYERS: &[Layer] = &[
    Layer {
        name: "vocabulary",
        modules: &[
            "error",
            "meta",
            "secret",
            "schema",
            "limit_spec",
            "head",
            "body",
            "boxed",
            "sse",
            "json_scan",
        ],
        why: "what a request is and what the phases learn about it, errors, secrets, the \
              cluster's documents: named by every phase, so they import none",
    },
    Layer {
        name: "protocol",
        modules: &["http1"],
        why: "HTTP/1.1 server and client, the upstream pool, TLS and DNS: wire work with no \
              gateway policy, beside the vocabulary and below everything that decides",
    },
    Layer {
        name: "settings and signals",
        modules: &["config", "telemetry", "metrics", "health"],
        why: "validated configuration, logging, metrics and health state: read by every \
              phase, knowing none of them",
    },
    Layer {
        name: "phases",
        modules: &[
            "accept", "auth", "admit", "limits", "route", "forward", "relay", "defer", "stream",
            "account",
        ],
        why: "one module per request phase; a later phase may use an earlier one's types, \
              never in a loop",
    },
    Layer {
        name: "shared state",
        modules: &["state"],
        why: "the snapshot and handles every connection shares, built from the phases' types",
    },
    Layer {
        name: "pipeline",
        modules: &["proxy", "deferred", "admin", "stats", "cluster"],
        why: "the request pipeline, the admin endpoints and the cluster supervisor, each \
              driving the phases over the shared state",
    },
    Layer {
        name: "process",
        modules: &["server", "cli", "threads"],
        why: "start, signals and drain; flags and environment; the threads' descriptor \
              tables: the top, used by main only",
    },
    Layer {
        name: "fuzz entry points",
        modules: &["fuzz"],
        why: "the parsers run against their references for the property tests and cargo \
              fuzz: reaches into the protocol and vocabulary, used by no module",
    },
];

#[test]
fn node_modules_stay_in_their_layers() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let report = check(&src, LAYERS);
    report.print();
    report.assert_clean();
}
