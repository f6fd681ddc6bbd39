//! Test helpers: the real `kluis-server` process, and a small canned HTTP(S) server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kluis_client::{Client, ClientConfig, Token};

/// The `kluis-server` binary, built once per test run (see kluis-testkit).
pub fn server_bin() -> &'static Path {
    kluis_testkit::server_bin()
}

pub use kluis_testkit::Server;

/// What these tests ask of the server beyond the shared fixture.
pub trait ServerExt {
    /// A client for this server with `token` and a disk cache in `cache`.
    fn client(&self, token: Option<&str>, cache: Option<&Path>) -> Client;
}

impl ServerExt for Server {
    fn client(&self, token: Option<&str>, cache: Option<&Path>) -> Client {
        let mut c = ClientConfig::new(&self.url);
        c.token = token.map(|t| Token::new(t).unwrap());
        c.cache_dir = cache.map(Path::to_owned);
        c.timeout = Duration::from_secs(10);
        Client::new(c).unwrap()
    }
}

/// A request the canned server received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A canned answer: status, extra headers, body. `None` means: never answer (hold the
/// connection open until the client gives up).
pub type Answer = Option<(u16, Vec<(&'static str, String)>, String)>;

type Handler = dyn Fn(usize, &Request) -> Answer + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1, plain or TLS, one request per connection.
pub struct Canned {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Canned {
    pub fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(usize, &Request) -> Answer + Send + Sync + 'static,
    ) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, handler, tls) = (seen.clone(), handler.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                    match tls {
                        Some(cfg) => {
                            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                                return;
                            };
                            serve(rustls::StreamOwned::new(conn, stream), &seen, &*handler);
                        }
                        None => serve(stream, &seen, &*handler),
                    }
                });
            }
        });
        Canned { port, requests }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn serve<S: Read + Write>(mut s: S, seen: &Mutex<Vec<Request>>, handler: &Handler) {
    let Some(req) = read_request(&mut s) else {
        return;
    };
    let n = {
        let mut v = seen.lock().unwrap();
        v.push(req.clone());
        v.len()
    };
    match handler(n, &req) {
        Some((status, headers, body)) => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            let _ = s.write_all(out.as_bytes());
            let _ = s.flush();
        }
        None => {
            // Hold the connection until the client hangs up.
            let mut b = [0u8; 64];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        }
    }
}

fn read_request<S: Read>(s: &mut S) -> Option<Request> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.push(b[0]);
    }
    let head = String::from_utf8(buf).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// A label record as the key server serves it, for label `hr` version 1.
pub fn record_json(key: &kluis_core::PublicKey) -> String {
    serde_json::json!({
        "label": "hr",
        "kid": 1,
        "public_key": key.to_string(),
        "double_key": false,
        "recovery": [],
        "versions": [{"kid": 1, "state": "current", "public_key": key.to_string()}],
        "max_age": 3600,
    })
    .to_string()
}

/// Assert that `token` appears nowhere in the error's `Display` or `Debug`.
pub fn assert_no_token(e: &dyn std::fmt::Debug, shown: &str, token: &str) {
    let debug = format!("{e:?}");
    assert!(!shown.contains(token), "token in Display: {shown}");
    assert!(!debug.contains(token), "token in Debug: {debug}");
    // Not even the secret part after the public id prefix.
    let tail = &token[token.len().saturating_sub(16)..];
    assert!(!shown.contains(tail) && !debug.contains(tail));
}
