//! The HTTP side: `/metrics`, `/healthz`, `/readyz` and the query API.
//!
//! Built to stay up when exposed: each connection has a few seconds to
//! send its request headers and a bounded life, connections beyond a cap
//! are closed at once, queries wait in a bounded queue (a full one answers
//! 503 at once), and the query API answers on a non-loopback address only
//! behind a token.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use super::status::{LeadAnswer, LeadQuery, Status, Subject};

/// How long a query waits for the loop to answer (it answers between
/// batches, so normally within one commit interval).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries waiting for the loop; beyond this a query is answered 503.
pub const QUERY_QUEUE: usize = 1024;
/// A client must send its request headers within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Every connection is closed after this, idle or not (scrapers, probes
/// and clients reconnect), so idle connections cannot hold the slots.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30);
/// Longer lead or account ids are refused (414), not looked up.
const MAX_ID_BYTES: usize = 512;

#[derive(Clone)]
pub struct AppState {
    /// One per score the process runs (one, unless its rules file holds
    /// several and it runs them all).
    pub statuses: Vec<Arc<Status>>,
    /// One queue per stream thread; a query goes to each, and the thread
    /// that holds the lead's partition answers it.
    pub queries: Vec<SyncSender<LeadQuery>>,
    pub metrics: PrometheusHandle,
    pub token: Option<String>,
    pub stuck_after: Duration,
    /// `false` on a non-loopback address without a token: `/v1/...`
    /// answers 403 rather than every lead's score to whoever reaches it.
    pub query_api: bool,
}

/// Whether the query API may answer on `listen` with `token`: always on
/// loopback, elsewhere only behind a token.
pub fn query_api_allowed(listen: &std::net::SocketAddr, token: Option<&str>) -> bool {
    listen.ip().is_loopback() || token.is_some()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/leads/{id}", get(lead))
        .route("/v1/accounts/{id}", get(account))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let since = state
        .statuses
        .iter()
        .map(|s| s.since_beat())
        .max()
        .unwrap_or_default();
    if since > state.stuck_after {
        let body = json!({"status": "stuck", "seconds_since_loop": since.as_secs()});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    // Coming round is not progress: an abort-and-retry loop does that too.
    if let Some(failing) = state
        .statuses
        .iter()
        .filter_map(|s| s.failing_for())
        .max()
        .filter(|f| *f > state.stuck_after)
    {
        let body = json!({"status": "failing", "seconds_failing": failing.as_secs()});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.statuses.iter().all(|s| s.is_ready()) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let body = json!({"status": "not ready: partitions not yet assigned and restored"});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

fn authorised(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn lead(state: State<AppState>, headers: HeaderMap, id: Path<String>) -> Response {
    query(state, headers, id, Subject::Lead).await
}

async fn account(state: State<AppState>, headers: HeaderMap, id: Path<String>) -> Response {
    query(state, headers, id, Subject::Account).await
}

async fn query(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    subject: Subject,
) -> Response {
    let what = match subject {
        Subject::Lead => "lead",
        Subject::Account => "account",
    };
    if !state.query_api {
        return error(
            StatusCode::FORBIDDEN,
            "query_api_off",
            "the query API is off: [http] listen is not a loopback address and no [http] token \
             is set"
                .into(),
        );
    }
    if !authorised(&state, &headers) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorised",
            "send Authorization: Bearer <the [http] token>".into(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
        return response;
    }
    if id.len() > MAX_ID_BYTES {
        // Not echoed back: it could be anything.
        return error(
            StatusCode::URI_TOO_LONG,
            "id_too_long",
            format!("{what} ids are at most {MAX_ID_BYTES} bytes"),
        );
    }
    let mut answers = Vec::with_capacity(state.queries.len());
    for queue in &state.queries {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = queue.try_send(LeadQuery {
            subject,
            lead_id: id.clone(),
            reply,
        });
        match asked {
            Ok(()) => answers.push(answer),
            Err(TrySendError::Full(_)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    format!("{QUERY_QUEUE} queries are already waiting; try again"),
                )
            }
            Err(TrySendError::Disconnected(_)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stopping",
                    "the processor is stopping".into(),
                )
            }
        }
    }
    let answer = async move {
        let mut all = Vec::with_capacity(answers.len());
        for answer in answers {
            all.push(answer.await?);
        }
        Ok::<_, tokio::sync::oneshot::error::RecvError>(LeadAnswer::combine(all))
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(LeadAnswer::Found(body))) => Json(body).into_response(),
        Ok(Ok(LeadAnswer::Unknown { partition })) => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": format!("unknown_{what}"),
                "message": format!("no {what} {id} (its partition {partition} is held here)"),
                "partition": partition,
            })),
        )
            .into_response(),
        Ok(Ok(LeadAnswer::Elsewhere {
            partition,
            assigned,
        })) => (
            StatusCode::MISDIRECTED_REQUEST,
            Json(json!({
                "error": "other_instance",
                "message": format!(
                    "{what} {id} belongs to partition {partition}, held by another instance; this one holds {assigned:?}"
                ),
                "partition": partition,
                "assigned_partitions": assigned,
            })),
        )
            .into_response(),
        Ok(Ok(LeadAnswer::NotReady)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "partitions are still being assigned or restored".into(),
        ),
        Ok(Err(_)) | Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the processing loop did not answer in time; try again".into(),
        ),
    }
}

/// Serves until the runtime shuts down, with at most `max_connections`
/// connections at once: one more is closed as soon as it is accepted.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, max_connections: usize) {
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait for some to close.
                tracing::warn!(error = %e, "cannot accept an http connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::ops::metrics::HTTP_CONNECTIONS_REFUSED).increment(1);
            continue; // dropped: closed
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection =
                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, connection).await;
                }
            }
            drop(slot);
        });
    }
}

/// A lead's current state as the query API returns it: the numbers, and
/// "why" split into fit and engagement contributions (the engagement ones
/// sum to `engagement`, the fit ones to `fit`).
pub fn lead_json(
    s: &crate::core::engine::LeadSnapshot,
    rules: &crate::core::Rules,
    partition: i32,
) -> serde_json::Value {
    let is_fit = |rule: &str| rules.fit.iter().any(|r| &*r.name == rule);
    let list = |fit: bool| -> Vec<serde_json::Value> {
        s.contributions
            .iter()
            .filter(|c| is_fit(&c.rule) == fit)
            .map(|c| json!({"rule": &*c.rule, "points": c.points}))
            .collect()
    };
    let mut answer = json!({
        "lead_id": s.lead_id,
        "account_id": s.account_id,
        "score": s.score,
        "fit": s.fit,
        "engagement": s.engagement,
        "base": rules.settings.base,
        "grade": s.grade.as_str(),
        "tier": &*s.tier,
        "as_of": s.as_of.to_rfc3339(),
        "last_event_at": s.last_event_at.to_rfc3339(),
        "rules_version": &*rules.version,
        "partition": partition,
        "why": {"fit": list(true), "engagement": list(false)},
        "lifecycle": s.lifecycle.as_ref().map(crate::codec::output::lifecycle_json),
    });
    name_score(&mut answer, rules);
    answer
}

/// A named score's answers say which score they are about.
fn name_score(answer: &mut serde_json::Value, rules: &crate::core::Rules) {
    if let Some(name) = rules.score_name.as_deref() {
        answer["score_name"] = json!(name);
    }
}

/// An account's current state as the query API returns it.
pub fn account_json(
    s: &crate::core::account::AccountSnapshot,
    rules: &crate::core::Rules,
    partition: i32,
) -> serde_json::Value {
    let why: Vec<serde_json::Value> = s
        .contributions
        .iter()
        .map(|c| json!({"rule": &*c.rule, "points": c.points}))
        .collect();
    let mut answer = json!({
        "account_id": s.account_id,
        "score": s.score,
        "fit": s.fit,
        "engagement": s.engagement,
        "committee": s.committee,
        "grade": s.grade.as_str(),
        "tier": &*s.tier,
        "members": s.members,
        "engaged_leads": s.engaged_leads,
        "as_of": s.as_of.to_rfc3339(),
        "last_event_at": s.last_event_at.to_rfc3339(),
        "rules_version": &*rules.version,
        "partition": partition,
        "why": why,
    });
    name_score(&mut answer, rules);
    answer
}
