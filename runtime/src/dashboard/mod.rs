//! The scheduler's dashboard: one page that updates live (server-sent
//! events), `/metrics` for Prometheus, `/api/status` (the JSON of
//! `taskfarm status --json`). Served by tiny_http on exactly the address
//! asked for; every request needs the dashboard token (derived from the
//! cluster's secret, so it grants reading the dashboard and nothing else).
//!
//! The pages are static files embedded in the binary; they read from the
//! scheduler through a [`Controller`] (no network connection, no secret).

pub mod metrics;

use crate::scheduler::Controller;
use crate::log_at;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const INDEX_HTML: &str = include_str!("index.html");

/// Where to serve. `fallback`: the address is the default one, so when its
/// port is taken (another scheduler on the node) another port is used, as
/// Dask does; an address given explicitly must be free.
#[derive(Clone, Debug)]
pub struct DashboardSpec {
    pub address: SocketAddr,
    pub fallback: bool,
}

/// The default, as Dask's: loopback only (reach it through an SSH tunnel).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8787";

/// How often a live page gets an update.
pub const UPDATE_EVERY: Duration = Duration::from_millis(500);

/// Live pages served at once at most (each holds a thread).
const MAX_STREAMS: usize = 16;

/// Task runs sent in one update at most (the newest; a page that falls
/// behind skips ahead).
const MAX_RUNS_PER_UPDATE: usize = 2_000;

/// The dashboard token for a cluster secret: HMAC-SHA256 of a fixed label,
/// hex, 32 characters.
pub fn token(secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"taskfarm dashboard token v1");
    mac.finalize().into_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse `--dashboard-address`: `HOST:PORT`, `:PORT` (loopback) or `PORT`.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim().trim_start_matches("http://").trim_end_matches('/');
    let full = if let Ok(port) = s.parse::<u16>() {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = s.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else {
        s.to_string()
    };
    full.parse::<SocketAddr>().map_err(|_| format!("{s:?} is not an address to serve the dashboard on; expected HOST:PORT such as 127.0.0.1:8787, or a port"))
}

/// A running dashboard; stops serving when dropped.
pub struct Dashboard {
    pub address: SocketAddr,
    /// The URL to open, token included.
    pub url: String,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tiny_http::Server> {
    tiny_http::Server::http(addr).map_err(|e| std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("cannot serve the dashboard on {addr}: {e}")))
}

pub fn start(spec: &DashboardSpec, secret: &[u8], controller: Controller) -> std::io::Result<Dashboard> {
    let server = match bind(spec.address) {
        Ok(s) => s,
        Err(e) if spec.fallback => {
            let other = SocketAddr::new(spec.address.ip(), 0);
            let s = bind(other)?;
            log_at!(1, "dashboard", "{e}; using another port (set --dashboard-address to choose)");
            s
        }
        Err(e) => return Err(e),
    };
    let address = server.server_addr().to_ip().ok_or_else(|| std::io::Error::other("the dashboard is not on an IP address"))?;
    let token = token(secret);
    let host = if address.ip().is_ipv6() { format!("[{}]", address.ip()) } else { address.ip().to_string() };
    let url = format!("http://{host}:{}/?token={token}", address.port());
    let server = Arc::new(server);
    let s = server.clone();
    let thread = std::thread::Builder::new().name("tf-dashboard".into()).spawn(move || serve(&s, &token, &controller))?;
    Ok(Dashboard { address, url, server, thread: Some(thread) })
}

/// Constant-time comparison (the token is a secret).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries: `?token=` or `Authorization: Bearer`.
fn carried_token(req: &tiny_http::Request) -> Option<String> {
    let from_query = req.url().split_once('?').and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("token=").map(str::to_string)));
    from_query.or_else(|| {
        req.headers().iter().find(|h| h.field.equiv("Authorization")).and_then(|h| h.value.as_str().strip_prefix("Bearer ").map(|t| t.trim().to_string()))
    })
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

/// Headers on every answer: nothing cached, the token not leaked through
/// the Referer, nothing loaded from elsewhere.
fn common_headers() -> Vec<tiny_http::Header> {
    vec![
        header("Cache-Control", "no-store"),
        header("Referrer-Policy", "no-referrer"),
        header("X-Content-Type-Options", "nosniff"),
        header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:"),
    ]
}

fn respond(req: tiny_http::Request, code: u16, content_type: &str, body: String) {
    let mut r = tiny_http::Response::from_string(body).with_status_code(code).with_header(header("Content-Type", content_type));
    for h in common_headers() {
        r.add_header(h);
    }
    let _ = req.respond(r);
}

fn serve(server: &tiny_http::Server, token: &str, controller: &Controller) {
    let streams = Arc::new(AtomicUsize::new(0));
    for req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("").to_string();
        if *req.method() != tiny_http::Method::Get {
            respond(req, 405, "text/plain; charset=utf-8", "only GET is served here\n".into());
            continue;
        }
        if !carried_token(&req).is_some_and(|t| same(&t, token)) {
            respond(
                req,
                403,
                "text/plain; charset=utf-8",
                "403 Forbidden: the dashboard needs its token. Open the URL the scheduler printed (http://HOST:PORT/?token=...), \
                 which `taskfarm status` also shows; for /metrics send `Authorization: Bearer TOKEN`.\n"
                    .into(),
            );
            continue;
        }
        match path.as_str() {
            "/" | "/index.html" => respond(req, 200, "text/html; charset=utf-8", INDEX_HTML.to_string()),
            "/metrics" => match controller.observe(u64::MAX, 0) {
                Some(o) => respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", metrics::render(&o.status, &o.telemetry.prefixes)),
                None => respond(req, 503, "text/plain; charset=utf-8", "the scheduler is shutting down\n".into()),
            },
            "/api/status" => match controller.status() {
                Some(s) => respond(req, 200, "application/json", crate::status::to_json_text(&s).unwrap_or_default()),
                None => respond(req, 503, "text/plain; charset=utf-8", "the scheduler is shutting down\n".into()),
            },
            "/events" => {
                if streams.load(Ordering::SeqCst) >= MAX_STREAMS {
                    respond(req, 503, "text/plain; charset=utf-8", format!("too many live dashboard pages open (at most {MAX_STREAMS}); close one\n"));
                    continue;
                }
                streams.fetch_add(1, Ordering::SeqCst);
                let (c, n) = (controller.clone(), streams.clone());
                let spawned = std::thread::Builder::new().name("tf-dash-events".into()).spawn(move || {
                    stream_events(req, &c);
                    n.fetch_sub(1, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    streams.fetch_sub(1, Ordering::SeqCst);
                }
            }
            _ => respond(req, 404, "text/plain; charset=utf-8", format!("no page {path} here; the dashboard is at /\n")),
        }
    }
}

/// One update for a live page: the status, the prefixes, and the task runs
/// and transfers since the last update.
pub fn update_json(o: &crate::scheduler::Observation) -> String {
    let t = &o.telemetry;
    let runs: Vec<serde_json::Value> =
        t.tasks.iter().map(|r| serde_json::json!([r.worker, r.thread, r.start_us, r.duration_us, r.prefix, r.ok, r.key])).collect();
    let transfers: Vec<serde_json::Value> = t.transfers.iter().map(|x| serde_json::json!([x.worker, x.start_us, x.duration_us, x.nbytes, x.from])).collect();
    serde_json::json!({
        "now_us": crate::util::unix_micros(),
        "status": crate::status::StatusJson::from(&o.status),
        "prefixes": t.prefixes,
        "runs": runs,
        "transfers": transfers,
        "names": t.workers.iter().map(|w| (w.id.to_string(), serde_json::Value::from(w.name.clone()))).collect::<serde_json::Map<String, serde_json::Value>>(),
    })
    .to_string()
}

fn stream_events(req: tiny_http::Request, controller: &Controller) {
    let mut w = req.into_writer();
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n");
    for h in common_headers() {
        head.push_str(&format!("{}: {}\r\n", h.field, h.value));
    }
    head.push_str("\r\n");
    if w.write_all(head.as_bytes()).and_then(|_| w.flush()).is_err() {
        return;
    }
    // Start with the recent past, not the whole stream.
    let Some(first) = controller.observe(u64::MAX, 0) else { return };
    let mut since = first.telemetry.next.saturating_sub(MAX_RUNS_PER_UPDATE as u64);
    loop {
        let Some(o) = controller.observe(since, MAX_RUNS_PER_UPDATE) else { return };
        since = o.telemetry.next;
        let msg = format!("data: {}\n\n", update_json(&o));
        if w.write_all(msg.as_bytes()).and_then(|_| w.flush()).is_err() {
            return; // the page was closed
        }
        std::thread::sleep(UPDATE_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_addresses() {
        assert_eq!(token(b"s"), token(b"s"));
        assert_ne!(token(b"s"), token(b"t"));
        assert_eq!(token(b"s").len(), 32);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert_eq!(parse_address("8787").unwrap().to_string(), "127.0.0.1:8787");
        assert_eq!(parse_address(":0").unwrap().to_string(), "127.0.0.1:0");
        assert_eq!(parse_address("0.0.0.0:9000").unwrap().to_string(), "0.0.0.0:9000");
        assert!(parse_address("nowhere").unwrap_err().contains("HOST:PORT"));
    }
}
