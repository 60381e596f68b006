//! The dashboard over plain HTTP, with two coordinators on one etcd: a session started
//! on the standby is accepted by the leader, an action taken on the standby is applied
//! by the leader, sign-in is rate limited, pages need a session, API clients keep
//! their bearer token.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(method: Method, url: &str, cookie: Option<&str>, form: Option<String>) -> Answer {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let body = match form {
        Some(f) => {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Bytes::from(f)
        }
        None => Bytes::new(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Full::new(body)).unwrap()),
    )
    .await
    .expect("an answer within 10 s")
    .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let data = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&data).into_owned(),
    }
}

/// `name=value` of the cookie `name` a response sets.
fn set_cookie(a: &Answer, name: &str) -> String {
    a.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", a.headers))
        .to_string()
}

fn csrf(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a CSRF field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

async fn sign_in(url: &str, token: &str) -> (Answer, Option<String>) {
    let form = send(Method::GET, &format!("{url}/signin"), None, None).await;
    assert_eq!(form.status, StatusCode::OK);
    let pre = set_cookie(&form, "strait_signin");
    let a = send(
        Method::POST,
        &format!("{url}/signin"),
        Some(&pre),
        Some(format!(
            "token={token}&name=ops-1&csrf={}",
            csrf(&form.body)
        )),
    )
    .await;
    let session = (a.status == StatusCode::SEE_OTHER).then(|| set_cookie(&a, "strait_session"));
    (a, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_and_an_action_on_the_standby_reach_the_leader() {
    let etcd = Etcd::start().await;
    let (leader, leader_url) = common::leader(&etcd).await;
    let standby = strait_coordinator::server::start(config(&etcd, "c2", "r2"))
        .await
        .unwrap();
    let standby_url = standby.url.clone();
    assert!(!standby.election.is_leader());

    // Pages need a session: the browser is sent to sign in, the live fetch gets 401.
    let a = send(Method::GET, &format!("{standby_url}/cluster"), None, None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers[header::LOCATION], "/signin");
    let a = send(
        Method::GET,
        &format!("{standby_url}/cluster?live=1"),
        None,
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // Sign in on the standby; the leader accepts the same cookie.
    let (a, session) = sign_in(&standby_url, TOKEN).await;
    let session = session.expect("signed in");
    let raw = a
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("strait_session="))
        .unwrap();
    assert!(
        raw.contains("HttpOnly") && raw.contains("SameSite=Strict") && raw.contains("Max-Age="),
        "{raw}"
    );
    assert!(!raw.contains("Secure"), "cookie_secure is off by default");
    let a = send(
        Method::GET,
        &format!("{leader_url}/cluster"),
        Some(&session),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("ops-1"));

    // An action on the standby is applied by the leader.
    let page = send(
        Method::GET,
        &format!("{standby_url}/cluster"),
        Some(&session),
        None,
    )
    .await;
    let token = csrf(&page.body);
    let a = send(
        Method::POST,
        &format!("{standby_url}/action"),
        Some(&session),
        Some(format!("op=drain_region&region=r9&csrf={token}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(
        a.body.contains(&format!("the leader at {leader_url}")),
        "{}",
        a.body
    );
    let dump = etcd.dump().await;
    assert!(
        dump.iter()
            .any(|(k, v)| k.ends_with("/regions/r9") && v.contains("\"draining\":true")),
        "{dump:?}"
    );
    // Without the token, or with another session's, nothing happens.
    let a = send(
        Method::POST,
        &format!("{standby_url}/action"),
        Some(&session),
        Some("op=undrain_region&region=r9&csrf=forged".to_string()),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // API clients keep using the bearer token; a session cookie is no API credential.
    let r = admin(Method::GET, &format!("{standby_url}/v1/cluster"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let a = send(
        Method::GET,
        &format!("{standby_url}/v1/cluster"),
        Some(&session),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // Wrong tokens: refused, then rate limited for this address.
    for _ in 0..5 {
        let (a, s) = sign_in(&leader_url, "a-wrong-admin-token-0000").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert!(a.body.contains("Wrong admin token."));
        assert!(s.is_none());
    }
    let (a, s) = sign_in(&leader_url, TOKEN).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert!(
        s.is_none(),
        "not even the right token gets in while limited"
    );

    // The audit log of the standby names who did what.
    let a = send(
        Method::GET,
        &format!("{standby_url}/audit"),
        Some(&session),
        None,
    )
    .await;
    assert!(a.body.contains("drain region r9"), "{}", a.body);
    assert!(a.body.contains("ops-1"));
    // The log is the cluster's: the leader shows the standby's entries too.
    let a = send(
        Method::GET,
        &format!("{leader_url}/audit"),
        Some(&session),
        None,
    )
    .await;
    assert!(a.body.contains("drain region r9"), "{}", a.body);

    standby.shutdown().await;
    leader.shutdown().await;
}
