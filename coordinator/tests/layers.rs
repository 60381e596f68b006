//! The coordinator's modules in layers: imports flow down only, and no two modules
//! import each other (checked on the source by `strait_chaos::layers`).

use strait_chaos::layers::{check, Layer};

/// Lowest first; a module may import its own layer and those below it.
pub const LAYERS: &[Layer] = &[
    Layer {
        name: "vocabulary",
        modules: &["leader", "error"],
        why: "who leads and what went wrong: named by every layer, so they import none",
    },
    Layer {
        name: "config",
        modules: &["config"],
        why: "validated settings, read once at start; knows nothing of etcd or HTTP",
    },
    Layer {
        name: "store",
        modules: &["store"],
        why: "every etcd call (and its in-memory twin) behind the Store and Elector traits",
    },
    Layer {
        name: "election",
        modules: &["election"],
        why: "campaign, lead, step down: timing and state over the Elector trait",
    },
    Layer {
        name: "app",
        modules: &["app"],
        why: "validate-then-commit of config changes over any Store",
    },
    Layer {
        name: "observe",
        modules: &["scrape"],
        why: "reads every node's /stats and keeps a short history; knows only the Store",
    },
    Layer {
        name: "dns",
        modules: &["dns"],
        why: "answers DNS from the node records the store watches; knows config and store",
    },
    Layer {
        name: "api",
        modules: &["api", "openapi"],
        why: "HTTP in and out: routes, token layer, per-resource handlers, their description",
    },
    Layer {
        name: "dashboard",
        modules: &["dashboard"],
        why: "the pages people use: sessions, HTML, and actions made as admin API calls",
    },
    Layer {
        name: "server",
        modules: &["server"],
        why: "wires etcd, election, app and api together and runs them",
    },
    Layer {
        name: "jobs",
        modules: &["evacuate"],
        why: "operator jobs run from the command line over the store and the brokers",
    },
    Layer {
        name: "cli",
        modules: &["cli"],
        why: "the binary's face: serve, and a client of the admin API",
    },
];

#[test]
fn coordinator_modules_stay_in_their_layers() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let report = check(&src, LAYERS);
    report.print();
    report.assert_clean();
}
