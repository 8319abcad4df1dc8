//! ratethrottle demo: a real WebSocket echo server with one `Limiter`
//! embedded, and five real clients that each trip (or do not trip) a
//! different limit.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! The server listens on 127.0.0.1 (OS-assigned port) and echoes every
//! message it allows. Per TCP connection it does what a production server
//! would:
//!
//! * before completing the upgrade: `Limiter::connect`; a denial is answered
//!   `HTTP 429 Too Many Requests` with a `Retry-After` header;
//! * per message: `Limiter::check_message`; a message over the size limit
//!   closes the socket with code 1009 (message too big), a message over the
//!   message-rate or bandwidth budget is dropped and answered with a JSON
//!   error frame, anything else is echoed;
//! * when the socket ends: `Limiter::disconnect`.
//!
//! Every client counts, on its own side, what it got back. The demo then
//! prints those counts next to the server's `Limiter::stats()` and the counts
//! seen by the violation callback, checks that they agree and that the honest
//! client lost nothing, and exits 0 — or 1 naming what went wrong, so it
//! doubles as an end-to-end smoke test. It ends by itself in about 3 s.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use ratethrottle::{clock, Conn, Decision, Limiter, Limits, Reason, Violation, REASON_COUNT, RETRY_NEVER};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{self, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{accept_hdr_async, connect_async, MaybeTlsStream, WebSocketStream};

// ---- configuration ------------------------------------------------------

/// Small limits so that every behaviour shows within a few seconds.
fn demo_limits() -> Limits {
    Limits {
        window_ms: 10_000,
        connections_per_window: 5,
        max_concurrent_connections: 3,
        messages_per_window: 50,
        bytes_per_window: 64 * 1024,
        max_message_size: 4 * 1024,
        // Capacities: a demo needs few slots (the default is 65536 each).
        max_clients: 1024,
        max_connections: 1024,
        ..Limits::default()
    }
}

const SPAM_HELD: usize = 10; // spammer phase 1: opened at once and held
const SPAM_SERIAL: usize = 10; // spammer phase 2: opened one by one, each closed at once
const FLOOD_MESSAGES: usize = 500;
const OVERSIZE_BYTES: usize = 16 * 1024;
const HOG_MESSAGE_BYTES: usize = 3 * 1024;
const HOG_MAX_MESSAGES: usize = 64;
const HONEST_MESSAGES: usize = 15;
const HONEST_INTERVAL: Duration = Duration::from_millis(200);

/// Bound on any single network step (connect, one reply, a close handshake).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// A server connection with no traffic for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the whole demo.
const DEMO_TIMEOUT: Duration = Duration::from_secs(45);

// ---- server ---------------------------------------------------------------

/// Accepts until told to stop, then waits for every connection handler.
async fn serve(listener: TcpListener, lim: Arc<Limiter>, mut stop: oneshot::Receiver<()>) {
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    handlers.spawn(handle_connection(tcp, Arc::clone(&lim)));
                }
                Err(e) => {
                    eprintln!("server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = &mut stop => break,
        }
    }
    while handlers.join_next().await.is_some() {}
}

/// One TCP connection: connect check during the upgrade, then the messages.
async fn handle_connection(tcp: TcpStream, lim: Arc<Limiter>) {
    let mut conn: Option<Conn> = None;
    // The callback's signature (an `ErrorResponse` as the error) is tungstenite's.
    #[allow(clippy::result_large_err)]
    let upgrade = accept_hdr_async(tcp, |req: &Request, resp: Response| {
        // The demo's clients all come from 127.0.0.1, so each one names
        // itself in the URL path (ws://127.0.0.1:PORT/<client-name>). A real
        // server would key on the peer's IP address (or a user id / API key
        // it trusts), never on something the client may choose freely.
        let client = req.uri().path().trim_start_matches('/');
        // Decide and register atomically, before the 101 is sent.
        let (decision, handle) = lim.connect(client.as_bytes());
        match (decision.allowed, handle) {
            (true, Some(h)) => {
                conn = Some(h);
                Ok(resp)
            }
            (true, None) => Err(refusal(StatusCode::SERVICE_UNAVAILABLE, "no_connection_slot", None)),
            (false, _) => {
                Err(refusal(StatusCode::TOO_MANY_REQUESTS, decision.reason.as_str(), Some(decision.retry_after_ms)))
            }
        }
    })
    .await;
    // Nothing registered: refused (tungstenite has written our 429 and
    // returned Err) or the request never got as far as the callback.
    let Some(conn) = conn else { return };
    if let Ok(ws) = upgrade {
        serve_messages(ws, &lim, conn).await;
    }
    // Allowed but the socket is gone (or the handshake failed after the
    // check): free the slot. Idempotent, so a second call is harmless.
    lim.disconnect(conn);
}

/// The 429 (or 503) response: JSON body, reason header, Retry-After.
fn refusal(status: StatusCode, reason: &str, retry_after_ms: Option<u64>) -> ErrorResponse {
    let retry_json = retry_after_ms.map_or(String::new(), |ms| format!(",\"retry_after_ms\":{}", json_retry(ms)));
    let body = format!("{{\"error\":\"rate_limited\",\"reason\":\"{reason}\"{retry_json}}}\n");
    let mut builder = http::Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Content-Length", body.len())
        .header("Connection", "close")
        .header("X-RateLimit-Reason", reason);
    if let Some(secs) = retry_after_ms.and_then(retry_after_secs) {
        builder = builder.header("Retry-After", secs);
    }
    builder.body(Some(body)).expect("a response built from valid parts")
}

/// `Retry-After` is whole seconds: round up, so a client that waits that
/// long is not refused again. A concurrency denial has `retry_after_ms` 0
/// (it clears when one of the client's connections closes, not at a time);
/// we answer 1 s rather than invite an immediate retry loop. `RETRY_NEVER`
/// (a request that can never pass) gets no header.
fn retry_after_secs(ms: u64) -> Option<u64> {
    (ms != RETRY_NEVER).then(|| ms.div_ceil(1000).max(1))
}

/// `retry_after_ms` in JSON: -1 for "never".
fn json_retry(ms: u64) -> i64 {
    if ms == RETRY_NEVER {
        -1
    } else {
        ms as i64
    }
}

/// Reads messages until the socket ends (or idles); echoes what is allowed.
async fn serve_messages(mut ws: WebSocketStream<TcpStream>, lim: &Limiter, conn: Conn) {
    loop {
        let msg = match timeout(IDLE_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(msg))) => msg,
            _ => break, // closed, failed, or idle
        };
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            Message::Close(_) => {
                // Free the slot now: tungstenite sends its reply to the close
                // on the next read, so a client that has seen its close
                // acknowledged can reconnect at once without meeting this
                // connection in the concurrency count.
                lim.disconnect(conn);
                continue;
            }
            _ => continue, // ping/pong: answered by tungstenite, not limited
        };
        let d = lim.check_message(conn, len as u64);
        let reply = if d.allowed {
            msg
        } else if d.reason == Reason::MessageTooLarge {
            // Close code 1009: "message too big". The reason text starts
            // with the engine's reason string.
            let text = format!("{} ({len} bytes, max {})", d.reason.as_str(), d.limit);
            Message::Close(Some(CloseFrame { code: CloseCode::Size, reason: text.into() }))
        } else {
            // Message rate or bandwidth (or any other denial): drop the
            // message and tell the client why and when to retry.
            Message::text(error_frame(&d))
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

fn error_frame(d: &Decision) -> String {
    format!(
        "{{\"error\":\"rate_limited\",\"reason\":\"{}\",\"retry_after_ms\":{}}}",
        d.reason.as_str(),
        json_retry(d.retry_after_ms)
    )
}

// ---- what the clients observe ------------------------------------------------

/// How a denial reached the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Http429,
    ErrorFrame,
    Close(u16),
}

/// One kind of denial a client saw, with the largest retry hint it carried.
struct Denial {
    via: Via,
    reason: String,
    count: u64,
    max_retry: Option<u64>,
}

/// Everything one client counted on its side of the socket.
struct Tally {
    name: &'static str,
    /// "connections" or "messages": what `allowed` and `denied` count.
    unit: &'static str,
    /// Connections upgraded (101) or messages echoed back intact.
    allowed: u64,
    denials: Vec<Denial>,
    /// Messages sent that got neither an echo nor a denial in time.
    lost: u64,
    /// Unexpected failures (transport errors, wrong echoes).
    errors: Vec<String>,
    /// The client ran across a window boundary (see [`in_one_window`]).
    straddled: bool,
}

impl Tally {
    fn new(name: &'static str, unit: &'static str) -> Tally {
        Tally { name, unit, allowed: 0, denials: Vec::new(), lost: 0, errors: Vec::new(), straddled: false }
    }

    fn deny(&mut self, via: Via, reason: &str, retry: Option<u64>) {
        let i = match self.denials.iter().position(|d| d.via == via && d.reason == reason) {
            Some(i) => i,
            None => {
                self.denials.push(Denial { via, reason: reason.to_string(), count: 0, max_retry: None });
                self.denials.len() - 1
            }
        };
        let d = &mut self.denials[i];
        d.count += 1;
        d.max_retry = d.max_retry.max(retry);
    }

    fn denied(&self) -> u64 {
        self.denials.iter().map(|d| d.count).sum()
    }

    fn denied_for(&self, reason: Reason) -> u64 {
        self.denials.iter().filter(|d| d.reason == reason.as_str()).map(|d| d.count).sum()
    }

    fn reasons(&self) -> String {
        let mut parts: Vec<String> = self
            .denials
            .iter()
            .map(|d| {
                let (via, retry) = match d.via {
                    Via::Http429 => ("HTTP 429", d.max_retry.map(|s| format!(", Retry-After <= {s} s"))),
                    Via::ErrorFrame => ("error frame", d.max_retry.map(|ms| format!(", retry_after_ms <= {ms}"))),
                    Via::Close(code) => return format!("close {code} {} x{}", d.reason, d.count),
                };
                format!("{via} {} x{}{}", d.reason, d.count, retry.unwrap_or_default())
            })
            .collect();
        if self.lost > 0 {
            parts.push(format!("LOST x{} (no answer)", self.lost));
        }
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// Runs a client and notes whether it ran inside one limiter window. The
/// engine's windows are aligned to its clock (window = now_ms / window_ms),
/// so a burst can straddle two windows; the sliding-window estimate then
/// lets the previous window's count decay and may admit a little more than
/// one window's limit in total. The checks are exact within one window.
async fn in_one_window(window_ms: u64, client: impl std::future::Future<Output = Tally>) -> Tally {
    let first = clock::now_ms() / window_ms;
    let mut t = client.await;
    t.straddled = clock::now_ms() / window_ms != first;
    t
}

type ClientWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Opened {
    Open(Box<ClientWs>),
    Refused { reason: String, retry_after_s: Option<u64> },
}

/// Opens `ws://127.0.0.1:PORT/<name>`; a 429 is an answer, not an error.
async fn open(base: &str, name: &str) -> Result<Opened, String> {
    match timeout(STEP_TIMEOUT, connect_async(format!("{base}/{name}"))).await {
        Err(_) => Err("connect timed out".into()),
        Ok(Ok((ws, _))) => Ok(Opened::Open(Box::new(ws))),
        Ok(Err(WsError::Http(resp))) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let reason = header("x-ratelimit-reason")
                .or_else(|| json_field(&body, "reason").map(str::to_string))
                .unwrap_or_else(|| "unknown".into());
            let retry_after_s = header("retry-after").and_then(|v| v.parse().ok());
            Ok(Opened::Refused { reason, retry_after_s })
        }
        Ok(Err(e)) => Err(format!("connect failed: {e}")),
    }
}

/// Closes with the full handshake: returns once the server has answered
/// the close (so it has also released the connection), or after a timeout.
async fn close(mut ws: ClientWs) {
    let _ = timeout(STEP_TIMEOUT, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What came back for one message.
enum Reply {
    Echo(Message),
    Denied { reason: String, retry_after_ms: Option<u64> },
    Closed { code: u16, reason: String },
    Nothing,
}

async fn next_reply(ws: &mut (impl StreamExt<Item = Result<Message, WsError>> + Unpin)) -> Reply {
    loop {
        let msg = match timeout(STEP_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(msg))) => msg,
            _ => return Reply::Nothing,
        };
        return match msg {
            Message::Text(t) if t.starts_with("{\"error\"") => Reply::Denied {
                reason: json_field(&t, "reason").unwrap_or("unknown").to_string(),
                retry_after_ms: json_field(&t, "retry_after_ms").and_then(|v| v.parse().ok()),
            },
            Message::Close(frame) => {
                let (code, text) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                // Our server's close reasons start with the engine's reason string.
                let reason = text.split_whitespace().next().unwrap_or("").to_string();
                Reply::Closed { code, reason }
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            echo => Reply::Echo(echo),
        };
    }
}

/// Extracts a field of the flat JSON objects this demo writes.
fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = json[at..].trim_start();
    match rest.strip_prefix('"') {
        Some(s) => s.split('"').next(),
        None => rest.split([',', '}']).next().map(str::trim),
    }
}

/// Counts one reply to a message whose echo should equal `sent`.
fn count_reply(t: &mut Tally, sent: &Message, reply: Reply) -> bool {
    match reply {
        Reply::Echo(m) if &m == sent => t.allowed += 1,
        Reply::Echo(_) => t.errors.push("an echo did not match the message sent".into()),
        Reply::Denied { reason, retry_after_ms } => t.deny(Via::ErrorFrame, &reason, retry_after_ms),
        Reply::Closed { code, reason } => {
            t.deny(Via::Close(code), &reason, None);
            return false;
        }
        Reply::Nothing => {
            t.lost += 1;
            return false;
        }
    }
    true
}

// ---- the five clients ------------------------------------------------------

/// Opens 20 connections fast. Phase 1: 10 at once, held open (3 fit the
/// concurrency limit). Phase 2, after closing those: 10 one after another,
/// each closed as soon as it is open (the connection-rate budget of 5 per
/// window runs out after 2 more).
async fn spammer(base: String) -> Tally {
    let mut t = Tally::new("spammer", "connections");
    let tally_open = |t: &mut Tally, r: Result<Opened, String>| match r {
        Ok(Opened::Open(ws)) => {
            t.allowed += 1;
            Some(ws)
        }
        Ok(Opened::Refused { reason, retry_after_s }) => {
            t.deny(Via::Http429, &reason, retry_after_s);
            None
        }
        Err(e) => {
            t.errors.push(e);
            None
        }
    };
    let attempts = join_all((0..SPAM_HELD).map(|_| open(&base, "spammer"))).await;
    let held: Vec<_> = attempts.into_iter().filter_map(|r| tally_open(&mut t, r)).collect();
    join_all(held.into_iter().map(|ws| close(*ws))).await;
    for _ in 0..SPAM_SERIAL {
        let r = open(&base, "spammer").await;
        if let Some(ws) = tally_open(&mut t, r) {
            close(*ws).await;
        }
    }
    t
}

/// Sends 500 small messages as fast as it can on one connection, reading the
/// answers concurrently: one answer (echo or error frame) per message.
async fn flooder(base: String) -> Tally {
    let mut t = Tally::new("flooder", "messages");
    let ws = match open(&base, "flooder").await {
        Ok(Opened::Open(ws)) => ws,
        _ => {
            t.errors.push("could not connect".into());
            return t;
        }
    };
    let (mut tx, mut rx) = (*ws).split();
    let send = async {
        for i in 0..FLOOD_MESSAGES {
            if tx.feed(Message::text(format!("flood {i}"))).await.is_err() {
                break;
            }
        }
        let _ = tx.flush().await;
    };
    let receive = async {
        for i in 0..FLOOD_MESSAGES {
            let sent = Message::text(format!("flood {i}"));
            let reply = next_reply(&mut rx).await;
            if !count_reply(&mut t, &sent, reply) {
                t.lost += (FLOOD_MESSAGES - i - 1) as u64;
                break;
            }
        }
    };
    tokio::join!(send, receive);
    if let Ok(ws) = tx.reunite(rx) {
        close(ws).await;
    }
    t
}

/// Sends one 16 KiB message: over the 4 KiB limit, the server closes (1009).
async fn oversize(base: String) -> Tally {
    let mut t = Tally::new("oversize", "messages");
    let mut ws = match open(&base, "oversize").await {
        Ok(Opened::Open(ws)) => ws,
        _ => {
            t.errors.push("could not connect".into());
            return t;
        }
    };
    let msg = Message::binary(vec![b'x'; OVERSIZE_BYTES]);
    if ws.send(msg.clone()).await.is_err() {
        t.errors.push("send failed".into());
        return t;
    }
    let reply = next_reply(&mut *ws).await;
    count_reply(&mut t, &msg, reply);
    close(*ws).await;
    t
}

/// Sends 3 KiB messages, one at a time, until the server refuses one (the
/// connection's 64 KiB bandwidth budget; bounded to 64 messages).
async fn hog(base: String) -> Tally {
    let mut t = Tally::new("hog", "messages");
    let mut ws = match open(&base, "hog").await {
        Ok(Opened::Open(ws)) => ws,
        _ => {
            t.errors.push("could not connect".into());
            return t;
        }
    };
    for i in 0..HOG_MAX_MESSAGES {
        let msg = Message::binary(vec![b'0' + (i % 10) as u8; HOG_MESSAGE_BYTES]);
        if ws.send(msg.clone()).await.is_err() {
            t.errors.push("send failed".into());
            break;
        }
        let reply = next_reply(&mut *ws).await;
        if !count_reply(&mut t, &msg, reply) || t.denied() > 0 {
            break;
        }
    }
    close(*ws).await;
    t
}

/// One message every 200 ms for 3 s: well inside every limit.
async fn honest(base: String) -> Tally {
    let mut t = Tally::new("honest", "messages");
    let mut ws = match open(&base, "honest").await {
        Ok(Opened::Open(ws)) => ws,
        Ok(Opened::Refused { reason, .. }) => {
            t.errors.push(format!("connect refused: {reason}"));
            return t;
        }
        Err(e) => {
            t.errors.push(e);
            return t;
        }
    };
    let mut tick = tokio::time::interval(HONEST_INTERVAL);
    for i in 0..HONEST_MESSAGES {
        tick.tick().await;
        let msg = Message::text(format!("hello #{i} from an honest client"));
        if ws.send(msg.clone()).await.is_err() {
            t.errors.push("send failed".into());
            t.lost += (HONEST_MESSAGES - i) as u64;
            break;
        }
        let reply = next_reply(&mut *ws).await;
        if !count_reply(&mut t, &msg, reply) {
            t.lost += (HONEST_MESSAGES - i - 1) as u64;
            break;
        }
    }
    close(*ws).await;
    t
}

// ---- the violation callback ---------------------------------------------------

/// What the violation callback saw: a count per reason and the first record.
struct Seen {
    counts: [AtomicU64; REASON_COUNT],
    first: [OnceLock<Violation>; REASON_COUNT],
}

// ---- main -------------------------------------------------------------------

#[tokio::main]
async fn main() -> ExitCode {
    match timeout(DEMO_TIMEOUT, run()).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("\ndemo FAILED: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("\ndemo FAILED: it did not finish within {} s", DEMO_TIMEOUT.as_secs());
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let started = Instant::now();
    let limits = demo_limits();
    let lim = Arc::new(Limiter::new(&limits).map_err(|e| format!("Limiter::new: {e}"))?);

    // The violation callback runs synchronously on the deciding thread, for
    // every denial: keep it short (here: two atomics).
    let seen = Arc::new(Seen {
        counts: std::array::from_fn(|_| AtomicU64::new(0)),
        first: std::array::from_fn(|_| OnceLock::new()),
    });
    let seen_cb = Arc::clone(&seen);
    lim.set_violation_callback(Some(Box::new(move |v: &Violation| {
        seen_cb.counts[v.reason as usize].fetch_add(1, Ordering::Relaxed);
        let _ = seen_cb.first[v.reason as usize].set(*v);
    })));

    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let base = format!("ws://{addr}");
    let (stop_tx, stop_rx) = oneshot::channel();
    let server = tokio::spawn(serve(listener, Arc::clone(&lim), stop_rx));

    println!("ratethrottle {} demo: WebSocket echo server on {base} with one Limiter", ratethrottle::VERSION);
    println!(
        "limits: window {} s | per client: {} new connections per window, {} at a time | per connection: {} messages \
         and {} KiB per window | max message {} KiB",
        limits.window_ms / 1000,
        limits.connections_per_window,
        limits.max_concurrent_connections,
        limits.messages_per_window,
        limits.bytes_per_window / 1024,
        limits.max_message_size / 1024,
    );
    println!();
    println!("five clients run at once, each naming itself in the URL path ({base}/<name>):");
    println!(
        "  spammer   opens {} connections: {SPAM_HELD} at once and held, then {SPAM_SERIAL} one by one",
        SPAM_HELD + SPAM_SERIAL
    );
    println!("  flooder   sends {FLOOD_MESSAGES} small messages as fast as it can on one connection");
    println!("  oversize  sends one {} KiB message", OVERSIZE_BYTES / 1024);
    println!("  hog       sends {} KiB messages until the server refuses one", HOG_MESSAGE_BYTES / 1024);
    println!("  honest    sends 1 message every {} ms, {HONEST_MESSAGES} in all", HONEST_INTERVAL.as_millis());

    let w = u64::from(limits.window_ms);
    let (t_spam, t_flood, t_over, t_hog, t_honest) = tokio::join!(
        in_one_window(w, spammer(base.clone())),
        in_one_window(w, flooder(base.clone())),
        oversize(base.clone()),
        in_one_window(w, hog(base.clone())),
        honest(base.clone()),
    );
    let tallies = [t_spam, t_flood, t_over, t_hog, t_honest];

    // Stop accepting and wait for every handler to disconnect.
    let _ = stop_tx.send(());
    if timeout(STEP_TIMEOUT, server).await.is_err() {
        return Err("the server's connection handlers did not finish".into());
    }
    let stats = lim.stats();

    // ---- report ----
    println!();
    println!("what each client saw (counted on the client side):");
    println!("  {:<9} {:<12} {:>7} {:>7}  reasons", "client", "counting", "allowed", "denied");
    for t in &tallies {
        let name = if t.straddled { format!("{}*", t.name) } else { t.name.to_string() };
        println!("  {:<9} {:<12} {:>7} {:>7}  {}", name, t.unit, t.allowed, t.denied(), t.reasons());
    }
    if tallies.iter().any(|t| t.straddled) {
        println!(
            "  * ran across a {} s window boundary: the previous window's count decays (sliding window), so a \
             little more than one window's limit may pass",
            limits.window_ms / 1000
        );
    }

    println!();
    println!("server: Limiter::stats()");
    println!(
        "  active connections {}, clients with live connections {}, clients tracked {}",
        stats.active_connections, stats.unique_clients, stats.tracked_clients
    );
    println!(
        "  connections allowed {}, messages allowed {} ({} bytes)",
        stats.connections_allowed, stats.total_messages, stats.total_bytes
    );
    let denied_total: u64 = stats.denied.iter().sum();
    println!("  denied {denied_total}:");
    for r in Reason::ALL.iter().skip(1).filter(|r| stats.denied[**r as usize] > 0) {
        println!("    {:<26} {:>5}", r.as_str(), stats.denied[*r as usize]);
    }

    println!();
    println!("violation callback: violations by type (first one of each)");
    for r in Reason::ALL.iter().skip(1) {
        let n = seen.counts[*r as usize].load(Ordering::Relaxed);
        if n == 0 {
            continue;
        }
        let first = seen.first[*r as usize].get().map_or(String::new(), |v| {
            let retry =
                if v.retry_after_ms == RETRY_NEVER { "never".into() } else { format!("{} ms", v.retry_after_ms) };
            format!(
                "(client {:?}, size {}, limit {}, current {}, retry after {retry})",
                String::from_utf8_lossy(v.client_id()),
                v.size,
                v.limit,
                v.current,
            )
        });
        println!("    {:<26} {:>5}  {first}", r.violation_type(), n);
    }

    println!();
    println!("Prometheus (Limiter::prometheus(), excerpt):");
    for line in lim.prometheus().lines().filter(|l| {
        l.starts_with("ratethrottle_connections_allowed_total")
            || (l.starts_with("ratethrottle_denied_total") && !l.ends_with(" 0"))
    }) {
        println!("    {line}");
    }

    // ---- checks: the demo is also a smoke test ----
    let failures = check(&limits, &tallies, &stats, &seen);
    let honest = &tallies[4];
    println!();
    println!(
        "honest client: {}/{HONEST_MESSAGES} echoed, {} denied, {} lost — {}",
        honest.allowed,
        honest.denied(),
        honest.lost,
        if honest.allowed == HONEST_MESSAGES as u64 && honest.denied() == 0 && honest.lost == 0 {
            "untouched"
        } else {
            "AFFECTED"
        }
    );
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        println!(
            "all checks passed: every abusive client was limited for the expected reason, the server's counts match"
        );
        Ok(())
    } else {
        for f in &failures {
            eprintln!("CHECK FAILED: {f}");
        }
        Err(format!("{} check(s) failed", failures.len()))
    }
}

/// Everything the demo promises; each failure is one sentence.
fn check(limits: &Limits, tallies: &[Tally; 5], stats: &ratethrottle::Stats, seen: &Seen) -> Vec<String> {
    let mut f = Vec::new();
    let [spam, flood, over, hog, honest] = tallies;
    for t in tallies {
        for e in &t.errors {
            f.push(format!("{}: {e}", t.name));
        }
    }

    if honest.allowed != HONEST_MESSAGES as u64 || honest.denied() != 0 || honest.lost != 0 {
        f.push(format!(
            "honest: expected {HONEST_MESSAGES}/{HONEST_MESSAGES} echoed and nothing denied, got {} echoed, {} denied, \
             {} lost",
            honest.allowed,
            honest.denied(),
            honest.lost
        ));
    }

    let spam_total = spam.allowed + spam.denied();
    if spam_total != (SPAM_HELD + SPAM_SERIAL) as u64 {
        f.push(format!("spammer: {spam_total} of {} connection attempts got an answer", SPAM_HELD + SPAM_SERIAL));
    }
    if spam.denials.iter().any(|d| d.via != Via::Http429) {
        f.push("spammer: a refusal was not an HTTP 429".into());
    }
    for r in [Reason::ConcurrentConnections, Reason::ConnectionRate] {
        if spam.denied_for(r) == 0 {
            f.push(format!("spammer: no connection was refused with {}", r.as_str()));
        }
    }
    // Within one window the outcome is exact: phase 1 fills the concurrency
    // limit and is refused for concurrency; phase 2 uses the rest of the
    // connection-rate budget and is refused for rate.
    let rate = u64::from(limits.connections_per_window);
    let held_ok = (SPAM_HELD as u64).min(u64::from(limits.max_concurrent_connections)).min(rate);
    let expected = [
        ("allowed", spam.allowed, rate),
        (
            Reason::ConcurrentConnections.as_str(),
            spam.denied_for(Reason::ConcurrentConnections),
            SPAM_HELD as u64 - held_ok,
        ),
        (
            Reason::ConnectionRate.as_str(),
            spam.denied_for(Reason::ConnectionRate),
            SPAM_SERIAL as u64 - (rate - held_ok),
        ),
    ];
    for (what, got, want) in expected {
        if !spam.straddled && got != want {
            f.push(format!("spammer: {what} {got}, expected {want}"));
        }
    }
    within_two_windows(&mut f, spam, rate);

    if flood.denied_for(Reason::MessageRate) == 0 {
        f.push("flooder: no message was refused with rate_limit_exceeded".into());
    }
    let want = u64::from(limits.messages_per_window);
    if !flood.straddled && flood.allowed != want {
        f.push(format!("flooder: {} messages echoed, expected {want}", flood.allowed));
    }
    within_two_windows(&mut f, flood, want);
    if flood.allowed + flood.denied() != FLOOD_MESSAGES as u64 {
        f.push(format!("flooder: {} of {FLOOD_MESSAGES} messages got an answer", flood.allowed + flood.denied()));
    }

    let closed_1009 = over.denials.iter().any(|d| d.via == Via::Close(1009) && d.reason == "message_too_large");
    if !closed_1009 || over.allowed != 0 {
        f.push("oversize: the 16 KiB message was not answered by a close with code 1009".into());
    }

    if hog.denied_for(Reason::Bandwidth) == 0 {
        f.push("hog: no message was refused with bandwidth_exceeded".into());
    }
    let want = limits.bytes_per_window / HOG_MESSAGE_BYTES as u64;
    if !hog.straddled && hog.allowed != want {
        f.push(format!("hog: {} messages of {HOG_MESSAGE_BYTES} bytes echoed, expected {want}", hog.allowed));
    }
    within_two_windows(&mut f, hog, want);

    // The server's statistics and the violation callback agree with what the
    // clients saw, reason by reason.
    for r in Reason::ALL.iter().skip(1) {
        let server = stats.denied[*r as usize];
        let callback = seen.counts[*r as usize].load(Ordering::Relaxed);
        let clients: u64 = tallies.iter().map(|t| t.denied_for(*r)).sum();
        if server != clients || callback != server {
            f.push(format!(
                "{}: server counted {server} denials, the violation callback {callback}, the clients {clients}",
                r.as_str()
            ));
        }
    }
    let opened: u64 = spam.allowed + (tallies.len() as u64 - 1);
    if stats.connections_allowed != opened {
        f.push(format!("server allowed {} connections, clients opened {opened}", stats.connections_allowed));
    }
    let echoed: u64 = tallies[1..].iter().map(|t| t.allowed).sum();
    if stats.total_messages != echoed {
        f.push(format!("server allowed {} messages, clients got {echoed} echoes", stats.total_messages));
    }
    if stats.active_connections != 0 {
        f.push(format!("{} connections still registered after every socket closed", stats.active_connections));
    }
    f
}

/// A burst shorter than a window spans at most two windows, and no window
/// admits more than the limit, so even across a boundary at most twice the
/// limit passes.
fn within_two_windows(f: &mut Vec<String>, t: &Tally, per_window: u64) {
    if t.allowed > 2 * per_window {
        f.push(format!(
            "{}: {} {} allowed, more than two windows' worth ({per_window} each)",
            t.name, t.allowed, t.unit
        ));
    }
}
