//! Which nodes a DNS answer holds: node records read as DNS sees them (address,
//! region, ready or not), the client's region from the subnet map, and the ECS scope
//! for which that choice holds. Pure functions, no I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use strait_node::schema::NodeState;

use crate::store::NodeDocs;

/// One node as the DNS server sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsNode {
    pub id: String,
    pub region: String,
    /// The host part of the record's `public_addr`.
    pub ip: IpAddr,
    /// Serving and ready (`pass` or `warn`).
    pub ready: bool,
}

/// The fields of the node record (`strait_node::schema::NodeRecord`) DNS reads.
/// Unknown fields are ignored, so records from newer nodes still parse.
#[derive(Deserialize)]
struct RecordView {
    id: String,
    region: String,
    public_addr: String,
    state: NodeState,
    #[serde(default)]
    path: Option<PathView>,
    /// A readiness verdict of its own (`"pass"`, or `{"status": "pass", ...}`).
    #[serde(default)]
    readiness: Option<Value>,
    /// The node's `/readyz` status (`strait_node::schema::Ready`: `"pass"`,
    /// `"warn"`, `"fail"`); a plain flag is read too.
    #[serde(default)]
    ready: Option<Value>,
}

#[derive(Deserialize)]
struct PathView {
    #[serde(default)]
    status: Option<String>,
    /// The direct path's circuit (`closed`, `half_open`, `open`).
    #[serde(default)]
    state: Option<String>,
}

/// The `/readyz` verdict the record carries: `ready` (what nodes publish,
/// `strait_node::schema::NodeRecord::ready`), or a `readiness` of the same meaning;
/// for records of older nodes without either, the circuit (`path.state`: open is
/// `fail`) or the path's `status`.
fn verdict(v: &RecordView) -> Option<String> {
    match &v.ready {
        Some(Value::String(s)) => return Some(s.to_ascii_lowercase()),
        Some(Value::Bool(r)) => return Some(if *r { "pass" } else { "fail" }.to_string()),
        _ => {}
    }
    match &v.readiness {
        Some(Value::String(s)) => return Some(s.to_ascii_lowercase()),
        Some(Value::Object(o)) => {
            if let Some(Value::String(s)) = o.get("status") {
                return Some(s.to_ascii_lowercase());
            }
        }
        _ => {}
    }
    let path = v.path.as_ref()?;
    if let Some(state) = &path.state {
        return Some(if state == "open" { "fail" } else { "pass" }.to_string());
    }
    path.status.as_ref().map(|s| s.to_ascii_lowercase())
}

/// The host of `host:port`, `[v6]:port`, or a bare address; `None` for a host name.
pub fn host_ip(public_addr: &str) -> Option<IpAddr> {
    let s = public_addr.trim();
    let s = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s);
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse() {
        return Some(ip);
    }
    let (host, _port) = s.rsplit_once(':')?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Parses every record; records without an IP address in `public_addr` or
/// unreadable ones are left out (and named in the log once per change).
pub fn parse_nodes(docs: &NodeDocs) -> Vec<DnsNode> {
    let mut out = Vec::with_capacity(docs.len());
    for (key, doc) in docs {
        let view: RecordView = match serde_json::from_slice(doc) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%key, error = %e, "dns: skipping an unreadable node record");
                continue;
            }
        };
        // A wildcard bind (0.0.0.0, ::) names no host: the node must set
        // `cluster.advertise_public` to an address clients can reach.
        let Some(ip) = host_ip(&view.public_addr).filter(|ip| !ip.is_unspecified()) else {
            tracing::warn!(%key, public_addr = %view.public_addr, "dns: public_addr has no usable IP address (set cluster.advertise_public on the node); node left out of DNS");
            continue;
        };
        let ready = view.state == NodeState::Serving
            && matches!(verdict(&view).as_deref(), Some("pass" | "warn"));
        out.push(DnsNode {
            id: view.id,
            region: view.region,
            ip,
            ready,
        });
    }
    out
}

/// Where the client is, as far as the answer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientNet {
    pub addr: IpAddr,
    /// How many leading bits of `addr` are known (32 or 128 for a packet source).
    pub prefix: u8,
}

/// The nodes chosen for one client, and how widely the choice holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice<'a> {
    pub nodes: Vec<&'a DnsNode>,
    /// The client's region from the map, if any subnet matched.
    pub region: Option<&'a str>,
    /// ECS scope: every address sharing this many leading bits with the client maps
    /// the same way.
    pub scope: u8,
    /// Nodes exist but none is ready, so every node is in the answer.
    pub fail_open: bool,
}

/// Chooses the nodes for `client`: the ready nodes of the client's region, or the
/// other regions' ready nodes when it has none; every ready node when the client is in
/// no mapped subnet (or unknown); every node when none is ready (fail open).
/// `map` is most specific first.
pub fn choose<'a>(
    nodes: &'a [DnsNode],
    map: &'a [(IpNet, String)],
    client: Option<ClientNet>,
) -> Choice<'a> {
    let ready: Vec<&DnsNode> = nodes.iter().filter(|n| n.ready).collect();
    let (region, scope) = match client {
        Some(c) => {
            let region = region_of(map, c);
            (region, scope_of(map, c, region))
        }
        None => (None, 0),
    };
    if ready.is_empty() && !nodes.is_empty() {
        return Choice {
            nodes: nodes.iter().collect(),
            region,
            scope,
            fail_open: true,
        };
    }
    let chosen = match region {
        Some(r) if ready.iter().any(|n| n.region == r) => {
            ready.into_iter().filter(|n| n.region == r).collect()
        }
        _ => ready,
    };
    Choice {
        nodes: chosen,
        region,
        scope,
        fail_open: false,
    }
}

/// The address with only its first `prefix` bits kept.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    IpNet::new(addr, prefix.min(max_prefix(addr)))
        .map(|n| n.network())
        .unwrap_or(addr)
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The region of the most specific mapped subnet holding the client's address.
fn region_of(map: &[(IpNet, String)], c: ClientNet) -> Option<&str> {
    let addr = masked(c.addr, c.prefix);
    map.iter()
        .find(|(net, _)| net.contains(&addr))
        .map(|(_, r)| r.as_str())
}

/// Leading bits two addresses of one family share.
fn common_bits(a: IpAddr, b: IpAddr) -> u8 {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) ^ u32::from(b)).leading_zeros() as u8,
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a) ^ u128::from(b)).leading_zeros() as u8,
        _ => 0,
    }
}

/// The shortest prefix of the client's address over which every address maps to the
/// same region as the client (RFC 7871 scope): start at the matched subnet's length
/// (0 when none matched) and lengthen it past every mapped subnet inside the block
/// that would send its addresses elsewhere.
fn scope_of(map: &[(IpNet, String)], c: ClientNet, region: Option<&str>) -> u8 {
    let addr = masked(c.addr, c.prefix);
    let mut scope = map
        .iter()
        .find(|(net, _)| net.contains(&addr))
        .map(|(n, _)| n.prefix_len())
        .unwrap_or(0);
    loop {
        let mut grown = scope;
        for (net, r) in map {
            if net.network().is_ipv4() != addr.is_ipv4() || Some(r.as_str()) == region {
                continue;
            }
            let inside_block =
                net.prefix_len() > scope && common_bits(addr, net.network()) >= scope;
            if inside_block && !net.contains(&addr) {
                // Just long enough to leave that subnet out of the client's block.
                grown = grown.max((common_bits(addr, net.network()) + 1).min(net.prefix_len()));
            }
        }
        if grown == scope {
            return scope;
        }
        scope = grown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: &str, ip: &str, ready: bool) -> DnsNode {
        DnsNode {
            id: id.into(),
            region: region.into(),
            ip: ip.parse().unwrap(),
            ready,
        }
    }

    fn map(entries: &[(&str, &str)]) -> Vec<(IpNet, String)> {
        let mut m: Vec<(IpNet, String)> = entries
            .iter()
            .map(|(n, r)| (n.parse::<IpNet>().unwrap().trunc(), r.to_string()))
            .collect();
        m.sort_by_key(|(net, _)| (net.addr().is_ipv6(), std::cmp::Reverse(net.prefix_len())));
        m
    }

    fn client(s: &str) -> Option<ClientNet> {
        let net: IpNet = s.parse().unwrap();
        Some(ClientNet {
            addr: net.addr(),
            prefix: net.prefix_len(),
        })
    }

    fn ids(c: &Choice) -> Vec<String> {
        c.nodes.iter().map(|n| n.id.clone()).collect()
    }

    #[test]
    fn host_part_of_public_addr() {
        assert_eq!(host_ip("10.0.0.1:8080"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            host_ip("[2001:db8::1]:443"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(host_ip("2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(
            host_ip("http://10.0.0.2:80"),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(host_ip("gw.example.com:443"), None);
    }

    #[test]
    fn records_parse_with_readiness_from_the_best_field_present() {
        let rec = |extra: &str, state: &str, status: &str| {
            format!(
                r#"{{"id":"n","region":"east","public_addr":"10.0.0.1:1","admin_addr":"x","version":"1","started_at":"t","state":"{state}","path":{{"ttfb_ms":null,"error_rate":0.0,"consecutive_failures":0,"status":"{status}"}}{extra}}}"#
            )
        };
        let ready = |doc: String| {
            let mut docs = NodeDocs::new();
            docs.insert("k".into(), doc.into_bytes());
            parse_nodes(&docs)[0].ready
        };
        assert!(ready(rec("", "serving", "pass")));
        assert!(ready(rec("", "serving", "warn")));
        assert!(!ready(rec("", "serving", "fail")));
        assert!(!ready(rec("", "draining", "pass")));
        assert!(!ready(rec(r#","readiness":"fail""#, "serving", "pass")));
        assert!(ready(rec(
            r#","readiness":{"status":"warn"}"#,
            "serving",
            "fail"
        )));
        assert!(!ready(rec(r#","ready":false"#, "serving", "pass")));
        // What nodes publish: `ready` as the /readyz verdict, first of all.
        assert!(!ready(rec(r#","ready":"fail""#, "serving", "pass")));
        assert!(ready(rec(r#","ready":"warn""#, "serving", "fail")));
        // The record the node writes today reads the same way.
        let today = strait_node::schema::NodeRecord {
            id: "a".into(),
            region: "east".into(),
            public_addr: "[2001:db8::7]:8443".into(),
            admin_addr: "127.0.0.1:1".into(),
            version: "0".into(),
            started_at: "t".into(),
            state: NodeState::Serving,
            path: strait_node::schema::PathHealth {
                status: "pass".into(),
                ..Default::default()
            },
            ready: strait_node::schema::Ready::Warn,
            tls: false,
        };
        let mut docs = NodeDocs::new();
        docs.insert("k".into(), serde_json::to_vec(&today).unwrap());
        docs.insert("bad".into(), b"{".to_vec());
        let wildcard = String::from_utf8(serde_json::to_vec(&today).unwrap())
            .unwrap()
            .replace("[2001:db8::7]:8443", "0.0.0.0:8443");
        docs.insert("wildcard".into(), wildcard.into_bytes());
        let parsed = parse_nodes(&docs);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].ip, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert!(parsed[0].ready);
    }

    #[test]
    fn region_fallback_and_fail_open() {
        let nodes = vec![
            node("e1", "east", "10.9.0.1", true),
            node("e2", "east", "10.9.0.2", false),
            node("w1", "west", "10.9.1.1", true),
        ];
        let m = map(&[("10.1.0.0/16", "east"), ("10.2.0.0/16", "west")]);
        let c = choose(&nodes, &m, client("10.1.2.3/32"));
        assert_eq!(
            (ids(&c), c.region, c.fail_open),
            (vec!["e1".into()], Some("east"), false)
        );
        assert_eq!(ids(&choose(&nodes, &m, client("10.2.0.9/32"))), ["w1"]);
        assert_eq!(
            ids(&choose(&nodes, &m, client("192.0.2.1/32"))),
            ["e1", "w1"]
        );
        assert_eq!(
            ids(&choose(&nodes, &[], client("10.1.2.3/32"))),
            ["e1", "w1"]
        );
        assert_eq!(ids(&choose(&nodes, &m, None)), ["e1", "w1"]);

        let east_down = vec![node("e1", "east", "10.9.0.1", false), nodes[2].clone()];
        assert_eq!(ids(&choose(&east_down, &m, client("10.1.2.3/32"))), ["w1"]);

        let all_down: Vec<DnsNode> = nodes
            .iter()
            .cloned()
            .map(|n| DnsNode { ready: false, ..n })
            .collect();
        let c = choose(&all_down, &m, client("10.1.2.3/32"));
        assert!(c.fail_open);
        assert_eq!(ids(&c), ["e1", "e2", "w1"]);
        // No node at all is an empty answer, not a fail-open one.
        assert!(!choose(&[], &m, client("10.1.2.3/32")).fail_open);
    }

    #[test]
    fn scope_covers_exactly_the_block_that_maps_alike() {
        let m = map(&[
            ("10.2.0.0/16", "west"),
            ("10.2.3.0/24", "east"),
            ("10.2.4.0/24", "west"),
            ("127.0.0.0/8", "east"),
            ("2001:db8::/32", "west"),
        ]);
        let scope = |c: &str| choose(&[], &m, client(c)).scope;
        // 10.2.3.0/24 sits inside 10.2.0.0/16 and maps elsewhere: 10.2.5.x shares 21
        // bits with it, so the answer holds for 10.2.4.0/22 (22 bits).
        assert_eq!(scope("10.2.5.0/24"), 22);
        assert_eq!(scope("10.2.3.0/24"), 24);
        assert_eq!(scope("127.0.0.1/32"), 8);
        // Unmapped: 192.x shares no leading bit with 10.x or 127.x.
        assert_eq!(scope("192.0.2.0/24"), 1);
        assert_eq!(scope("2001:db8:1::/48"), 32);
        // Unmapped IPv6: 3fff:: shares 3 bits with 2001:db8::, so the block is /4.
        assert_eq!(scope("3fff::/48"), 4);
        assert_eq!(choose(&[], &[], client("10.2.5.0/24")).scope, 0);
    }
}
