//! The HTTP side: `/metrics`, `/healthz`, `/readyz` and the query API.

use std::sync::mpsc::Sender;
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

#[derive(Clone)]
pub struct AppState {
    pub status: Arc<Status>,
    pub queries: Sender<LeadQuery>,
    pub metrics: PrometheusHandle,
    pub token: Option<String>,
    pub stuck_after: Duration,
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
    let since = state.status.since_beat();
    if since > state.stuck_after {
        let body = json!({"status": "stuck", "seconds_since_loop": since.as_secs()});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    // Coming round is not progress: an abort-and-retry loop does that too.
    if let Some(failing) = state
        .status
        .failing_for()
        .filter(|f| *f > state.stuck_after)
    {
        let body = json!({"status": "failing", "seconds_failing": failing.as_secs()});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.status.is_ready() {
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
    let (reply, answer) = tokio::sync::oneshot::channel();
    let asked = state.queries.send(LeadQuery {
        subject,
        lead_id: id.clone(),
        reply,
    });
    if asked.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the processor is stopping".into(),
        );
    }
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

/// Serves until the runtime shuts down.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
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
    json!({
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
    })
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
    json!({
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
    })
}
