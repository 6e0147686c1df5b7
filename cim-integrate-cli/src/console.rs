//! The web console: one page (embedded in the binary) over a small JSON API on [`Ops`].
//!
//! Bound to a loopback address it needs no token; bound elsewhere it refuses to start without
//! one, and every request must carry it (`Authorization: Bearer TOKEN`, or `?token=TOKEN` for
//! the page itself, which passes it on to its API calls).

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use cim_integrate_runtime::ops::{DeadLetterFilter, Ops, OpsError, SagaFilter};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

/// The page: HTML, CSS and script in one file, compiled into the binary.
const PAGE: &str = include_str!("console.html");

/// How many unsettled sagas of each kind the overview details (remaining steps).
const UNSETTLED_SHOWN: usize = 50;

#[derive(Clone)]
struct App {
    ops: Ops,
    token: Option<Arc<str>>,
}

/// Why the console cannot start.
#[derive(Debug)]
pub(crate) enum ConsoleError {
    /// Bound to a non-loopback address without a token.
    TokenRequired(SocketAddr),
    /// The address cannot be bound.
    Bind(std::io::Error),
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TokenRequired(a) => write!(
                f,
                "{a} is not a loopback address: a token is required (--token or CIM_CONSOLE_TOKEN)"
            ),
            Self::Bind(e) => write!(f, "cannot listen: {e}"),
        }
    }
}

/// The router of the console over `ops`.
fn router(ops: Ops, token: Option<String>) -> Router {
    let app = App {
        ops,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/", get(page))
        .route("/api/overview", get(overview))
        .route("/api/dlq", get(letters))
        .route("/api/dlq/{sequence}", get(letter))
        .route("/api/dlq/redrive", post(redrive))
        .route("/api/sagas/{name}/{id}", get(saga))
        .route("/api/sagas/{name}/{id}/retry", post(retry_saga))
        .layer(middleware::from_fn_with_state(app.clone(), authorise))
        .with_state(app)
}

/// Serves the console on `listen` until the process is interrupted (Ctrl-C / SIGTERM).
pub(crate) async fn serve(ops: Ops, listen: SocketAddr, token: Option<String>) -> Result<(), ConsoleError> {
    let token = token.filter(|t| !t.is_empty());
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(ConsoleError::TokenRequired(listen));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(ConsoleError::Bind)?;
    let bound = listener.local_addr().map_err(ConsoleError::Bind)?;
    // The address on stdout, for people and for scripts that bind port 0.
    println!("console listening on http://{bound}/");
    tracing::info!(%bound, "console started");
    axum::serve(listener, router(ops, token))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(ConsoleError::Bind)
}

async fn authorise(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(token) = &app.token else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("token="));
    if bearer == Some(token) || query == Some(token) {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "a token is required").into_response()
    }
}

/// An [`OpsError`] as an HTTP answer: 404 not found, 503 unavailable, 400 invalid, else 500.
struct ApiError(OpsError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            OpsError::NotFound(_) => StatusCode::NOT_FOUND,
            e if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            OpsError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(serde_json::json!({ "error": self.0.to_string() }))).into_response()
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        Self(e)
    }
}

type ApiResult = Result<Response, ApiError>;

fn json(value: impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// Everything the page shows, in one answer.
async fn overview(State(app): State<App>) -> ApiResult {
    let ops = &app.ops;
    let all = DeadLetterFilter::all();
    let (topology, handlers, hosts, groups) = tokio::try_join!(
        ops.topology(),
        ops.handlers(),
        ops.hosts(),
        ops.dead_letter_groups(&all),
    )?;
    let mut sagas = Vec::new();
    for name in ops.saga_names().await? {
        // Unsettled ones, with their remaining steps (at most a page of them).
        let mut list = Vec::new();
        for s in ops
            .sagas(&name, &SagaFilter::all())
            .await?
            .into_iter()
            .filter(|s| !s.settled)
        {
            let remaining = if list.len() < UNSETTLED_SHOWN {
                match ops.saga(&name, &s.id).await {
                    Ok(v) => v.remaining,
                    // Settled or forgotten meanwhile.
                    Err(OpsError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            } else {
                Vec::new()
            };
            list.push(serde_json::json!({ "summary": s, "remaining": remaining }));
        }
        sagas.push(serde_json::json!({ "name": name, "sagas": list }));
    }
    let domain = crate::cli::jetstream_domain(ops)
        .map(|(name, servers_own)| serde_json::json!({ "name": name, "servers_own": servers_own }));
    json(serde_json::json!({
        "jetstream_domain": domain,
        "topology": topology,
        "handlers": handlers,
        "hosts": hosts,
        "dead_letter_groups": groups,
        "sagas": sagas,
    }))
}

#[derive(Deserialize)]
struct GroupQuery {
    fingerprint: Option<String>,
}

async fn letters(State(app): State<App>, Query(q): Query<GroupQuery>) -> ApiResult {
    let filter = DeadLetterFilter {
        fingerprint: q.fingerprint,
        ..DeadLetterFilter::all()
    };
    json(app.ops.dead_letters(&filter).await?)
}

async fn letter(State(app): State<App>, Path(sequence): Path<u64>) -> ApiResult {
    json(app.ops.dead_letter(sequence).await?)
}

#[derive(Deserialize)]
struct RedriveBody {
    fingerprint: Option<String>,
    sequences: Option<Vec<u64>>,
}

async fn redrive(State(app): State<App>, axum::Json(body): axum::Json<RedriveBody>) -> ApiResult {
    let filter = match body {
        RedriveBody {
            fingerprint: Some(f), ..
        } => DeadLetterFilter::group(f),
        RedriveBody { sequences: Some(s), .. } if !s.is_empty() => DeadLetterFilter {
            sequences: Some(s),
            ..DeadLetterFilter::all()
        },
        _ => return Err(OpsError::Invalid("say which: `fingerprint` or `sequences`".into()).into()),
    };
    json(app.ops.redrive(&filter, |_| {}).await?)
}

async fn saga(State(app): State<App>, Path((name, id)): Path<(String, String)>) -> ApiResult {
    json(app.ops.saga(&name, &id).await?)
}

async fn retry_saga(State(app): State<App>, Path((name, id)): Path<(String, String)>) -> ApiResult {
    json(app.ops.retry_saga(&name, &id).await?)
}
