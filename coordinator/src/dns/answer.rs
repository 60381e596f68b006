//! One DNS query in, one authoritative reply out: A/AAAA at the apex from the chosen
//! nodes, SOA and NS at the apex, NXDOMAIN below it, REFUSED outside it, and the
//! client's ECS option echoed with the scope its answer holds for.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::sync::watch;

use super::select::{self, ClientNet};
use super::{DnsMetrics, Snapshot};
use crate::config::DnsConfig;
use crate::error::{Error, Result};

/// The UDP payload size we offer in replies (the DNS flag day 2020 value).
const MAX_PAYLOAD: u16 = 1232;

/// The request handler the hickory server calls for every query.
pub struct Answerer {
    apex: Name,
    apex_lower: LowerName,
    nameservers: Vec<Name>,
    hostmaster: Name,
    ttl: u32,
    regions: Vec<(ipnet::IpNet, String)>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    metrics: DnsMetrics,
}

fn fqdn(name: &str) -> Result<Name> {
    Name::from_ascii(format!("{name}."))
        .map_err(|e| Error::config(format!("dns name {name:?}: {e}")))
}

impl Answerer {
    pub fn new(
        config: &DnsConfig,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        metrics: DnsMetrics,
    ) -> Result<Answerer> {
        let apex = fqdn(&config.name)?;
        Ok(Answerer {
            apex_lower: LowerName::new(&apex),
            apex,
            nameservers: config
                .nameservers
                .iter()
                .map(|n| fqdn(n))
                .collect::<Result<_>>()?,
            hostmaster: fqdn(&config.hostmaster)?,
            ttl: config.ttl.as_secs().min(u32::MAX as u64) as u32,
            regions: config.regions.clone(),
            snapshot,
            metrics,
        })
    }

    fn soa(&self, serial: u32) -> Record {
        Record::from_rdata(
            self.apex.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                self.nameservers[0].clone(),
                self.hostmaster.clone(),
                serial,
                // refresh, retry, expire: only secondaries read them; the negative TTL
                // (minimum) follows the answer TTL so a new node shows up as fast.
                300,
                60,
                86_400,
                self.ttl,
            )),
        )
    }

    fn ns(&self) -> Vec<Record> {
        self.nameservers
            .iter()
            .map(|n| Record::from_rdata(self.apex.clone(), self.ttl, RData::NS(NS(n.clone()))))
            .collect()
    }
}

/// What the reply holds, before encoding.
struct Reply {
    code: ResponseCode,
    /// True for names in the zone.
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    /// The ECS scope to return (0 when the answer does not depend on the client).
    scope: u8,
    outcome: &'static str,
}

impl Reply {
    fn error(code: ResponseCode, outcome: &'static str) -> Reply {
        Reply {
            code,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            scope: 0,
            outcome,
        }
    }
}

/// The client subnet from ECS, else the packet's source; `None` for an ECS of
/// length 0 (the client asked not to be located).
fn client_net(request: &Request) -> (Option<ClientNet>, Option<ClientSubnet>) {
    let ecs = request
        .edns
        .as_ref()
        .and_then(|e| e.option(EdnsCode::Subnet))
        .and_then(|o| match o {
            EdnsOption::Subnet(s) => Some(*s),
            _ => None,
        });
    match ecs {
        Some(s) if s.source_prefix() == 0 => (None, Some(s)),
        Some(s) => (
            Some(ClientNet {
                addr: s.addr(),
                prefix: s.source_prefix(),
            }),
            Some(s),
        ),
        None => {
            let ip = match request.src().ip() {
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(v6)),
                v4 => v4,
            };
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            (Some(ClientNet { addr: ip, prefix }), None)
        }
    }
}

impl Answerer {
    fn reply(&self, request: &Request, client: Option<ClientNet>) -> Reply {
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return Reply::error(ResponseCode::NotImp, "notimp");
        }
        let Ok(info) = request.request_info() else {
            return Reply::error(ResponseCode::FormErr, "formerr");
        };
        let query = info.query;
        if query.query_class() != DNSClass::IN || !self.apex_lower.zone_of(query.name()) {
            return Reply::error(ResponseCode::Refused, "refused");
        }
        let snap = self.snapshot.borrow().clone();
        let mut reply = Reply {
            code: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authority: Vec::new(),
            scope: 0,
            outcome: "answer",
        };
        if query.name() != &self.apex_lower {
            reply.code = ResponseCode::NXDomain;
            reply.authority.push(self.soa(snap.serial));
            reply.outcome = "nxdomain";
            return reply;
        }
        let qname = query.original().name().clone();
        let qtype = query.query_type();
        if matches!(qtype, RecordType::SOA | RecordType::ANY) {
            reply.answers.push(self.soa(snap.serial));
        }
        if matches!(qtype, RecordType::NS | RecordType::ANY) {
            reply.answers.extend(self.ns());
        }
        if matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
            let choice = select::choose(&snap.nodes, &self.regions, client);
            if choice.fail_open {
                self.metrics.fail_open.inc();
            }
            reply.scope = choice.scope;
            for n in &choice.nodes {
                let data = match (n.ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                reply
                    .answers
                    .push(Record::from_rdata(qname.clone(), self.ttl, data));
            }
        }
        if reply.answers.is_empty() {
            // NODATA: the name exists, with no record of this type (RFC 2308).
            reply.authority.push(self.soa(snap.serial));
            reply.outcome = "nodata";
        }
        reply
    }
}

#[async_trait::async_trait]
impl RequestHandler for Answerer {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let (client, ecs) = client_net(request);
        let reply = self.reply(request, client);
        self.metrics
            .queries
            .with_label_values(&[reply.outcome])
            .inc();

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        // A query with EDNS gets EDNS back; its ECS comes back with our scope
        // (RFC 7871 7.2.1: family, source length and address as sent).
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(MAX_PAYLOAD);
            if let Some(s) = ecs {
                e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                    s.addr(),
                    s.source_prefix(),
                    reply.scope,
                )));
            }
            e
        });
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authority.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "dns: cannot send a reply");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
