//! The HTTP server of `[http]`: the status page, `/metrics`,
//! `/api/status`, the dead-letter buttons and `POST /ingest/{device}`,
//! served with axum on the daemon's runtime.
//!
//! Who may do what:
//! - with `[http] password_file`, every request needs HTTP Basic with a
//!   login from it (401 otherwise), except `/ingest`, which is a door into
//!   the local broker and logs in as an MQTT client would (the broker's
//!   password file, `allow_anonymous` and ACL);
//! - the dead-letter buttons change the outbox: they exist only with a
//!   password file, and a press must carry the page's CSRF token and a
//!   `Host` that is an IP address, `localhost` or one of
//!   `[http] host_names` (a page on another site cannot press them, nor
//!   reach them by DNS rebinding).

mod guard;
mod listen;
mod metrics;
mod page;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::history::History;
use super::status::StatusSource;
use crate::access::PasswordFile;
use crate::config::HttpConfig;
use crate::source::http::{HttpIngest, Refused};
use crate::store::{DeadOp, Pick};

pub use page::esc;

/// Everything a request may need.
pub struct Web {
    pub status: StatusSource,
    pub history: History,
    /// `[http] password_file`, loaded.
    pub logins: Option<PasswordFile>,
    pub ingest: Option<HttpIngest>,
    pub store_path: PathBuf,
    pub host_names: Vec<String>,
    pub max_body: usize,
    /// The dead-letter forms' token, new at every start.
    pub csrf: String,
    /// Failed logins per address.
    guard: std::sync::Mutex<guard::LoginGuard>,
}

impl Web {
    /// From the config; fails naming the password file if it cannot be read.
    pub fn new(
        cfg: &HttpConfig,
        status: StatusSource,
        ingest: Option<HttpIngest>,
        store_path: PathBuf,
    ) -> Result<Web, String> {
        let logins = cfg
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()
            .map_err(|e| format!("http.password_file: {e}"))?;
        Ok(Web {
            status,
            history: History::default(),
            logins,
            ingest: ingest.filter(|_| cfg.ingest),
            store_path,
            host_names: cfg.host_names.clone(),
            max_body: usize::try_from(cfg.max_body.0).unwrap_or(usize::MAX),
            csrf: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            guard: std::sync::Mutex::default(),
        })
    }
}

/// Binds `addr`; the error names the key.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (http.listen): {e}"))
}

/// Serves until `shutdown`; samples the charts' history meanwhile.
pub async fn serve(web: Web, listener: TcpListener, shutdown: CancellationToken) {
    let web = Arc::new(web);
    tokio::spawn(web.history.clone().record(
        web.status.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    let max_body = web.max_body;
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(prometheus))
        .route("/api/status", get(api_status))
        .route("/api/history", get(api_history))
        .route("/dead-letters/{action}", post(dead_letters))
        .route("/ingest/{device}", post(ingest))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(web);
    let stop = shutdown.clone();
    let app = app.into_make_service_with_connect_info::<Peer>();
    if let Err(e) = axum::serve(listen::Bounded::new(listener), app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::warn!(error = %e, "the status page stopped serving");
    }
}

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<axum::serve::IncomingStream<'_, listen::Bounded>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, listen::Bounded>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl Web {
    /// `Some(429)` for an address that failed to log in too often lately.
    fn held_back(&self, peer: SocketAddr) -> Option<Response> {
        let now = std::time::Instant::now();
        let check = self
            .guard
            .lock()
            .map(|g| g.check(peer.ip(), now))
            .unwrap_or(Ok(()));
        check.err().map(|wait| {
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this address; try again later\n",
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        })
    }

    /// A failed HTTP login: counted with the broker's refused logins, and
    /// logged once a minute per address with the count.
    fn login_failed(&self, peer: SocketAddr, door: &str, why: &str) {
        if let Some(b) = &self.status.broker {
            crate::stats::add(&b.counters().refused, 1);
        }
        let due = self
            .guard
            .lock()
            .ok()
            .and_then(|mut g| g.failed(peer.ip(), std::time::Instant::now()));
        if let Some(n) = due {
            let ip = peer.ip();
            tracing::warn!(%ip, door, reason = %why, count = n, "HTTP login refused from {ip} on {door}: {why} ({n} since the last line)");
        }
    }
}

/// `(user, password)` of an `Authorization: Basic` header.
fn basic(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let colon = raw.iter().position(|b| *b == b':')?;
    let (user, pass) = raw.split_at(colon);
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        pass.get(1..).unwrap_or_default().to_vec(),
    ))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"outpost\", charset=\"UTF-8\"",
        )],
        "a login from http.password_file is needed\n",
    )
        .into_response()
}

/// Lets the request through, or answers 401 (only with a password file).
async fn login(web: &Web, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Response> {
    let Some(file) = &web.logins else {
        return Ok(());
    };
    let Some((user, pass)) = basic(headers) else {
        return Err(unauthorized());
    };
    if let Some(r) = web.held_back(peer) {
        return Err(r);
    }
    if file.verify(&user, &pass) {
        Ok(())
    } else {
        web.login_failed(peer, "the status page", "bad username or password");
        Err(unauthorized())
    }
}

/// Is `Host` one the page may be reached by?
fn host_ok(web: &Web, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    // `[::1]:8088`, `10.0.0.5:8088`, `pi.local:8088`, `localhost`.
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || web.host_names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

async fn index(
    State(web): State<Arc<Web>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = login(&web, peer, &headers).await {
        return r;
    }
    render_page(&web, None).await
}

async fn render_page(web: &Web, notice: Option<&str>) -> Response {
    let snap = web.status.snapshot();
    let (accepted, delivered, queued) = web.history.series(crate::clock::mono_ms());
    let path = web.store_path.clone();
    let dead = tokio::task::spawn_blocking(move || {
        if path.exists() {
            crate::store::dead_letters(&path).unwrap_or_default()
        } else {
            Vec::new()
        }
    })
    .await
    .unwrap_or_default();
    let shown: Vec<_> = dead.into_iter().rev().take(50).collect();
    let warnings = super::journal::recent();
    let html = page::render(&page::View {
        snap: &snap,
        accepted: &accepted,
        delivered: &delivered,
        queued: &queued,
        warnings: &warnings,
        dead: &shown,
        csrf: web.logins.as_ref().map(|_| web.csrf.as_str()),
        notice,
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

async fn prometheus(
    State(web): State<Arc<Web>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = login(&web, peer, &headers).await {
        return r;
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&web.status.snapshot()),
    )
        .into_response()
}

async fn api_status(
    State(web): State<Arc<Web>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = login(&web, peer, &headers).await {
        return r;
    }
    axum::Json(web.status.snapshot()).into_response()
}

async fn api_history(
    State(web): State<Arc<Web>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = login(&web, peer, &headers).await {
        return r;
    }
    let (accepted, delivered, queued) = web.history.series(crate::clock::mono_ms());
    axum::Json(serde_json::json!({
        "seconds_ago_and_value": {
            "accepted_per_s": accepted,
            "delivered_per_s": delivered,
            "queued": queued,
        }
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct DeadForm {
    csrf: String,
    id: String,
}

async fn dead_letters(
    State(web): State<Arc<Web>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Path(action): Path<String>,
    headers: HeaderMap,
    form: Result<Form<DeadForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if web.logins.is_none() {
        return (
            StatusCode::FORBIDDEN,
            "the dead-letter buttons need http.password_file (or use `outpost dead-letters`)\n",
        )
            .into_response();
    }
    if let Err(r) = login(&web, peer, &headers).await {
        return r;
    }
    if !host_ok(&web, &headers) {
        return (
            StatusCode::FORBIDDEN,
            "this Host is not one the page is served as: add it to http.host_names\n",
        )
            .into_response();
    }
    let Ok(Form(form)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            "expected the form fields csrf and id\n",
        )
            .into_response();
    };
    if !crate::access::constant_time_eq(form.csrf.as_bytes(), web.csrf.as_bytes()) {
        return (
            StatusCode::FORBIDDEN,
            "the form's token is not this page's (reload the page)\n",
        )
            .into_response();
    }
    let op = match action.as_str() {
        "retry" => DeadOp::Retry,
        "purge" => DeadOp::Purge,
        _ => return (StatusCode::NOT_FOUND, "retry or purge\n").into_response(),
    };
    let pick = match form.id.as_str() {
        "all" => Pick::All,
        id => match id.parse() {
            Ok(id) => Pick::One(id),
            Err(_) => {
                return (StatusCode::BAD_REQUEST, "id must be a number or all\n").into_response()
            }
        },
    };
    match web.status.outbox.dead_letters_act(op, pick).await {
        Ok(done) => {
            tracing::info!(action = %action, id = %form.id, done = done.done, kept = done.kept.len(), "dead letters changed from the status page");
            Redirect::to("/").into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn ingest(
    State(web): State<Arc<Web>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Some(http) = &web.ingest else {
        return (
            StatusCode::NOT_FOUND,
            "HTTP ingest is off (http.ingest = false)\n",
        )
            .into_response();
    };
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than http.max_body ({} bytes)\n",
                    web.max_body
                ),
            )
                .into_response()
        }
        Err(e) => return (e.status(), format!("{e}\n")).into_response(),
    };
    let login = basic(&headers);
    let token = headers.get("x-device-token").and_then(|v| v.to_str().ok());
    if let Some(refused) = from_this_site(&web, &headers, login.is_some() || token.is_some()) {
        return refused;
    }
    if login.is_some() {
        if let Some(r) = web.held_back(peer) {
            return r;
        }
    }
    match http
        .post(
            &device,
            login.as_ref().map(|(u, p)| (u.as_str(), p.as_slice())),
            token,
            &body,
        )
        .await
    {
        Ok(n) => (StatusCode::OK, axum::Json(serde_json::json!({"stored": n}))).into_response(),
        Err(r) => {
            let code = match &r {
                Refused::Login(why) => {
                    if login.is_some() {
                        web.login_failed(peer, "/ingest", why);
                    }
                    return unauthorized_ingest(&r);
                }
                Refused::Denied(_) => StatusCode::FORBIDDEN,
                Refused::Bad(_) => StatusCode::BAD_REQUEST,
                Refused::Undeliverable(_) => StatusCode::UNPROCESSABLE_ENTITY,
                Refused::Busy(_) => {
                    let mut resp =
                        (StatusCode::SERVICE_UNAVAILABLE, format!("{r}\n")).into_response();
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                    return resp;
                }
            };
            (code, format!("{r}\n")).into_response()
        }
    }
}

/// Could a page on another site have sent this request? A browser sends
/// `Origin` with a cross-site POST, and without a CORS preflight (which
/// outpost never grants) it can send only form and plain-text bodies with
/// no `Authorization` or custom header. So a reading must come with the
/// `Host` outpost is reached by, no foreign `Origin` or `Sec-Fetch-Site`,
/// and a JSON content type unless it carries a login or a device token.
/// `Some(answer)` when the request is refused.
fn from_this_site(web: &Web, headers: &HeaderMap, credentials: bool) -> Option<Response> {
    let refuse = |code: StatusCode, why: String| Some((code, format!("{why}\n")).into_response());
    if !host_ok(web, headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this Host is not one outpost is reached by: add it to http.host_names".into(),
        );
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|s| s == "cross-site" || s == "same-site") {
        return refuse(
            StatusCode::FORBIDDEN,
            "a reading posted by a page of another site is refused".into(),
        );
    }
    if let Some(origin) = header("origin") {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if Some(origin_host) != header("host") {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("a reading posted by a page of another site (Origin: {origin}) is refused"),
            );
        }
    }
    let json = header("content-type").is_some_and(|t| {
        let t = t
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
    });
    if !json && !credentials {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the reading with Content-Type: application/json (e.g. curl -H 'Content-Type: application/json'): any web page can post other types".into(),
        );
    }
    None
}

fn unauthorized_ingest(r: &Refused) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"outpost ingest\", charset=\"UTF-8\"",
        )],
        format!("{r} (the local broker's logins apply)\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn basic_credentials_are_read_as_sent() {
        let h = headers(&[("authorization", "Basic YWRtaW46czNjcjp0")]);
        assert_eq!(basic(&h), Some(("admin".into(), b"s3cr:t".to_vec())));
        assert_eq!(basic(&headers(&[("authorization", "Bearer x")])), None);
        assert_eq!(basic(&headers(&[("authorization", "Basic !!!")])), None);
    }
}
