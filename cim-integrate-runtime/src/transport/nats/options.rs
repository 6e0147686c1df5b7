//! Connection settings for [`NatsTransport`](super::NatsTransport), from code or from the
//! environment. Secrets never reach a log: the [`Debug`](std::fmt::Debug) output redacts them.

use crate::transport::TransportError;
use std::path::PathBuf;
use std::time::Duration;

/// The server URL(s), comma-separated (`nats://host:4222,nats://other:4222`).
pub const ENV_URL: &str = "NATS_URL";
/// User name, with [`ENV_PASSWORD`].
pub const ENV_USER: &str = "NATS_USER";
/// Password, with [`ENV_USER`].
pub const ENV_PASSWORD: &str = "NATS_PASSWORD";
/// Authentication token.
pub const ENV_TOKEN: &str = "NATS_TOKEN";
/// NKey seed (`SU...`), given directly.
pub const ENV_NKEY_SEED: &str = "NATS_NKEY_SEED";
/// Path of a file holding the NKey seed.
pub const ENV_NKEY_FILE: &str = "NATS_NKEY_FILE";
/// Path of a `.creds` file (JWT and NKey seed).
pub const ENV_CREDS: &str = "NATS_CREDS";
/// Path of a PEM file with CA certificates to trust (adds TLS).
pub const ENV_CA: &str = "NATS_CA";
/// Path of the client certificate (PEM), with [`ENV_KEY`], for mutual TLS.
pub const ENV_CERT: &str = "NATS_CERT";
/// Path of the client key (PEM), with [`ENV_CERT`].
pub const ENV_KEY: &str = "NATS_KEY";
/// `1`/`true`: refuse to connect without TLS.
pub const ENV_TLS_REQUIRED: &str = "NATS_TLS_REQUIRED";
/// `1`/`true`: start TLS before the server's INFO (servers with `handshake_first`).
pub const ENV_TLS_FIRST: &str = "NATS_TLS_FIRST";
/// The connection name shown by the server's monitoring.
pub const ENV_CONNECTION_NAME: &str = "NATS_CONNECTION_NAME";
/// The JetStream domain to address.
pub const ENV_JS_DOMAIN: &str = "NATS_JS_DOMAIN";
/// How long connecting keeps trying while no server answers (`60s`, `5m`; `0`: not at all).
pub const ENV_CONNECT_WAIT: &str = "NATS_CONNECT_WAIT";

/// How to authenticate.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (or credentials inside the URL).
    #[default]
    None,
    /// User name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An NKey seed.
    NKeySeed(String),
    /// A `.creds` file.
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::NKeySeed(_) => f.write_str("NKeySeed(<redacted>)"),
            Self::CredentialsFile(p) => f.debug_tuple("CredentialsFile").field(p).finish(),
        }
    }
}

/// TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// Refuse plain-text connections.
    pub required: bool,
    /// TLS before the server's INFO (`handshake_first` servers).
    pub first: bool,
    /// CA certificates (PEM files) to trust in addition to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Client certificate and key (PEM files) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Everything needed to connect, plus the transport's tuning knobs.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Authentication.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
    /// Connection name, shown in the server's monitoring.
    pub name: Option<String>,
    /// Timeout of JetStream API requests and of each wait for a publish acknowledgement.
    pub request_timeout: Duration,
    /// How many times a publish whose acknowledgement timed out is sent again (same
    /// `Nats-Msg-Id`, so the stream stores it once) before the timeout is reported.
    pub publish_retries: u32,
    /// Most messages asked for by each pull request of a consumer (200, async-nats's own
    /// default; a consumer with a prefetch asks for at most twice that). Larger is faster;
    /// every message pulled starts its ack wait when the server sends it, even if
    /// [`Consumer::next`] is called later.
    ///
    /// [`Consumer::next`]: crate::transport::Consumer::next
    pub pull_batch: usize,
    /// Idle heartbeat of pull requests: a consumer that misses two restarts its pull (after a
    /// consumer leader moves, or a pull request was lost, this is how soon the pull finds the
    /// leader; 1 s by default). A consumer with an inactive threshold uses at most a quarter of
    /// it (at least 50 ms), so a lost pull is replaced before the server removes the consumer.
    /// Before a pull starts, a request on its subject checks that it reaches the consumer leader
    /// and its answer comes back, asked again after a quarter of this without an answer; with no
    /// answer for twice this, the start fails (an interruption, retried).
    pub pull_heartbeat: Duration,
    /// Expiry of each pull request.
    pub pull_expires: Duration,
    /// The JetStream domain to address (leaf-node deployments: the hub's or the leaf's domain);
    /// `None`: the connected server's own.
    pub js_domain: Option<String>,
    /// How long [`NatsTransport::connect`](super::NatsTransport::connect) keeps trying while no
    /// server answers (connection refused, timed out, name not resolved): a host started before
    /// its servers, or during their restart, waits for them instead of exiting. Zero (the
    /// default) fails at the first attempt. Refused credentials and TLS failures are never
    /// waited out. While it waits, a warning says why every 10 s.
    pub connect_wait: Duration,
    /// Replicas, placement and storage of what this transport provisions, and the outstanding
    /// deliveries per durable.
    pub deployment: crate::transport::Deployment,
}

pub(crate) fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| {
            let u = u.trim();
            let (scheme, rest) = match u.find("://") {
                Some(i) => (&u[..i + 3], &u[i + 3..]),
                None => ("", u),
            };
            match rest.rfind('@') {
                Some(at) => format!("{scheme}<redacted>@{}", &rest[at + 1..]),
                None => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &redact_url(&self.url))
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("name", &self.name)
            .field("request_timeout", &self.request_timeout)
            .field("publish_retries", &self.publish_retries)
            .field("pull_batch", &self.pull_batch)
            .field("pull_heartbeat", &self.pull_heartbeat)
            .field("pull_expires", &self.pull_expires)
            .field("js_domain", &self.js_domain)
            .field("connect_wait", &self.connect_wait)
            .field("deployment", &self.deployment)
            .finish()
    }
}

impl NatsOptions {
    /// Options for `url` with no credentials and default tuning.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            name: None,
            request_timeout: Duration::from_secs(5),
            publish_retries: 3,
            pull_batch: 200,
            pull_heartbeat: Duration::from_secs(1),
            pull_expires: Duration::from_secs(30),
            js_domain: None,
            connect_wait: Duration::ZERO,
            deployment: crate::transport::Deployment::default(),
        }
    }

    /// Reads the options from the environment; `None` if `NATS_URL` is not set.
    ///
    /// | variable | meaning |
    /// | --- | --- |
    /// | `NATS_URL` | server URL(s), comma-separated |
    /// | `NATS_USER`, `NATS_PASSWORD` | user and password |
    /// | `NATS_TOKEN` | token |
    /// | `NATS_NKEY_SEED` / `NATS_NKEY_FILE` | NKey seed, or a file holding it |
    /// | `NATS_CREDS` | `.creds` file |
    /// | `NATS_CA` | CA certificate file(s), comma-separated |
    /// | `NATS_CERT`, `NATS_KEY` | client certificate and key for mutual TLS |
    /// | `NATS_TLS_REQUIRED` | `1`/`true`: refuse plain-text |
    /// | `NATS_TLS_FIRST` | `1`/`true`: TLS handshake first |
    /// | `NATS_CONNECTION_NAME` | connection name |
    /// | `NATS_JS_DOMAIN` | the JetStream domain to address (leaf nodes) |
    /// | `NATS_CONNECT_WAIT` | how long connecting waits for a server to answer (`60s`, `5m`; `0`, the default: not at all) |
    /// | `NATS_REPLICAS`, `NATS_PLACEMENT_CLUSTER`, `NATS_PLACEMENT_TAGS`, `NATS_STORAGE`, `NATS_MAX_AGE`, `NATS_MAX_ACK_PENDING` | the [`Deployment`](crate::transport::Deployment) |
    ///
    /// At most one authentication method may be set. An unreadable `NATS_NKEY_FILE` is an error.
    pub fn from_env() -> Result<Option<Self>, TransportError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// As [`from_env`](Self::from_env), with variables from `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TransportError> {
        let Some(url) = lookup(ENV_URL) else { return Ok(None) };
        let mut o = Self::new(url.trim());
        let mut methods = Vec::new();
        match (lookup(ENV_USER), lookup(ENV_PASSWORD)) {
            (Some(user), Some(password)) => {
                methods.push(ENV_USER);
                o.auth = NatsAuth::UserPassword { user, password };
            }
            (None, None) => {}
            _ => {
                return Err(TransportError::Invalid(format!(
                    "{ENV_USER} and {ENV_PASSWORD} must be set together"
                )));
            }
        }
        if let Some(t) = lookup(ENV_TOKEN) {
            methods.push(ENV_TOKEN);
            o.auth = NatsAuth::Token(t);
        }
        if let Some(s) = lookup(ENV_NKEY_SEED) {
            methods.push(ENV_NKEY_SEED);
            o.auth = NatsAuth::NKeySeed(s.trim().to_owned());
        }
        if let Some(path) = lookup(ENV_NKEY_FILE) {
            methods.push(ENV_NKEY_FILE);
            let seed = std::fs::read_to_string(&path)
                .map_err(|e| TransportError::Invalid(format!("{ENV_NKEY_FILE} `{path}`: {e}")))?;
            o.auth = NatsAuth::NKeySeed(seed.trim().to_owned());
        }
        if let Some(path) = lookup(ENV_CREDS) {
            methods.push(ENV_CREDS);
            o.auth = NatsAuth::CredentialsFile(path.into());
        }
        if methods.len() > 1 {
            return Err(TransportError::Invalid(format!(
                "several NATS authentication methods are set ({}); set only one",
                methods.join(", ")
            )));
        }
        if let Some(ca) = lookup(ENV_CA) {
            o.tls.ca_files = ca
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        match (lookup(ENV_CERT), lookup(ENV_KEY)) {
            (Some(c), Some(k)) => o.tls.client_cert = Some((c.into(), k.into())),
            (None, None) => {}
            _ => {
                return Err(TransportError::Invalid(format!(
                    "{ENV_CERT} and {ENV_KEY} must be set together"
                )));
            }
        }
        let flag = |k: &str| -> Result<bool, TransportError> {
            match lookup(k).map(|v| v.trim().to_ascii_lowercase()) {
                None => Ok(false),
                Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
                Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
                Some(v) => Err(TransportError::Invalid(format!(
                    "{k}: expected true or false, got `{v}`"
                ))),
            }
        };
        o.tls.required = flag(ENV_TLS_REQUIRED)?;
        o.tls.first = flag(ENV_TLS_FIRST)?;
        o.name = lookup(ENV_CONNECTION_NAME);
        o.js_domain = lookup(ENV_JS_DOMAIN).map(|d| d.trim().to_owned());
        if let Some(d) = &o.js_domain
            && (d.is_empty() || d.contains(|c: char| c.is_whitespace() || ".*>".contains(c)))
        {
            return Err(TransportError::Invalid(format!(
                "{ENV_JS_DOMAIN}: `{d}` is not a JetStream domain name"
            )));
        }
        if let Some(w) = lookup(ENV_CONNECT_WAIT) {
            let w = w.trim();
            o.connect_wait = if w == "0" {
                Duration::ZERO
            } else {
                crate::transport::deploy::parse_duration(w).ok_or_else(|| {
                    TransportError::Invalid(format!(
                        "{ENV_CONNECT_WAIT}: expected a duration such as `60s` or `5m` (or `0`), got `{w}`"
                    ))
                })?
            };
        }
        o.deployment = crate::transport::Deployment::from_lookup(&lookup)?;
        Ok(Some(o))
    }

    /// The async-nats connect options these settings describe; the server's refusals of
    /// publishes go to `denials`.
    pub(crate) async fn connect_options(
        &self,
        denials: std::sync::Arc<super::denials::Denials>,
    ) -> Result<async_nats::ConnectOptions, TransportError> {
        let mut c = match &self.auth {
            // Read again at every connection attempt (`creds`): rotated credentials are the ones
            // the next reconnection presents.
            NatsAuth::CredentialsFile(p) => {
                let file = super::creds::CredsFile::load(p)?;
                async_nats::ConnectOptions::with_auth_callback(move |nonce| file.clone().auth(nonce))
            }
            _ => async_nats::ConnectOptions::new(),
        }
        .request_timeout(Some(self.request_timeout))
        .connection_timeout(self.request_timeout)
        .event_callback({
            let reports = std::sync::Arc::new(Reports {
                connection: self.name.clone(),
                denials,
                failed_attempts: crate::throttle::Counted::default(),
                dropped: crate::throttle::Counted::default(),
            });
            move |event| {
                let reports = reports.clone();
                async move { reports.event(event) }
            }
        });
        c = match &self.auth {
            NatsAuth::None => c,
            NatsAuth::UserPassword { user, password } => c.user_and_password(user.clone(), password.clone()),
            NatsAuth::Token(t) => c.token(t.clone()),
            NatsAuth::NKeySeed(s) => c.nkey(s.clone()),
            NatsAuth::CredentialsFile(_) => c,
        };
        for ca in &self.tls.ca_files {
            c = c.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls.client_cert {
            c = c.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls.required || !self.tls.ca_files.is_empty() || self.tls.client_cert.is_some() {
            c = c.require_tls(true);
        }
        if self.tls.first {
            c = c.tls_first();
        }
        if let Some(name) = &self.name {
            c = c.name(name);
        }
        Ok(c)
    }
}

/// Credentials inside the server URLs (`nats://user:pass@host`, `nats://token@host`), which
/// async-nats 0.51 parses but never sends. URLs that carry credentials must carry the same ones.
pub(crate) fn url_auth(addrs: &[async_nats::ServerAddr]) -> Result<NatsAuth, TransportError> {
    let mut found: Option<NatsAuth> = None;
    for addr in addrs {
        let Some(user) = addr.username() else { continue };
        let auth = match addr.password() {
            Some(password) => NatsAuth::UserPassword {
                user: percent_decode(user),
                password: percent_decode(password),
            },
            None => NatsAuth::Token(percent_decode(user)),
        };
        match &found {
            Some(f) if *f != auth => {
                return Err(TransportError::Invalid(
                    "the NATS URLs carry different credentials; give them once, in the options".into(),
                ));
            }
            _ => found = Some(auth),
        }
    }
    Ok(found.unwrap_or_default())
}

/// Decodes `%XX` escapes (URL user info is kept percent-encoded); other bytes are kept.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a failed first connection is worth trying again while
/// [`connect_wait`](NatsOptions::connect_wait) lasts: nothing answered (refused, timed out, a name
/// not resolved yet). Refused credentials, a TLS failure or an unparsable address fail at once.
pub(crate) fn waits_out(kind: async_nats::ConnectErrorKind) -> bool {
    use async_nats::ConnectErrorKind as K;
    matches!(kind, K::Io | K::TimedOut | K::Dns)
}

/// The error of a connection that could not be made: the reason, the servers (credentials
/// redacted), and, if nothing answered, how long it was tried or how to wait for servers that
/// start later.
pub(crate) fn connect_failed(
    options: &NatsOptions,
    failed: &async_nats::ConnectError,
    attempts: u32,
    waited: Duration,
) -> TransportError {
    let url = redact_url(&options.url);
    let how = if !waits_out(failed.kind()) {
        String::new()
    } else if attempts > 1 {
        format!(" ({attempts} attempts over {:.1} s)", waited.as_secs_f64())
    } else {
        format!(
            " (is nats-server running there? {ENV_CONNECT_WAIT}=60s, or NatsOptions::connect_wait, waits for servers that start later)"
        )
    };
    TransportError::Connection(format!("connecting to NATS at {url}: {failed}{how}"))
}

/// What the connection's events tell an operator, logged: connections and disconnections,
/// lame duck mode, why reconnecting fails, refusals, and messages the client dropped.
#[derive(Debug)]
struct Reports {
    /// The connection's name ([`NatsOptions::name`]), in every line logged (`connection`), so
    /// that a process with several connections tells them apart; none if unnamed.
    connection: Option<String>,
    /// The server's refusals of publishes, recorded for the publishes that time out.
    denials: std::sync::Arc<super::denials::Denials>,
    /// Failed connection attempts since the last warning about them, and the warnings' pace.
    failed_attempts: crate::throttle::Counted,
    /// Messages dropped for a full subscription buffer ("slow consumer") since the last
    /// warning, and the warnings' pace.
    dropped: crate::throttle::Counted,
}

impl Reports {
    fn event(&self, event: async_nats::Event) {
        use async_nats::{ClientError, Event, ServerError};
        let connection = self.connection.as_deref();
        match event {
            Event::Connected => {
                // The next outage's failures are counted, and the first reported, afresh.
                self.failed_attempts.reset();
                tracing::info!(connection, "NATS connected");
            }
            Event::Disconnected => tracing::warn!(connection, "NATS disconnected; reconnecting"),
            Event::LameDuckMode => tracing::info!(
                connection,
                "the NATS server is in lame duck mode (about to restart): it hands its JetStream leaderships over, then closes this connection, and the client reconnects to another server"
            ),
            // A connection attempt failed; async-nats tries the next server after a back-off.
            Event::ClientError(ClientError::Other(reason)) => {
                if let Some(attempts) = self.failed_attempts.count() {
                    tracing::warn!(connection, %reason, attempts, "connecting to NATS failed; trying again");
                }
            }
            Event::ClientError(ClientError::MaxReconnects) => {
                tracing::error!(
                    connection,
                    "NATS: the client gave up reconnecting (its maximum of attempts)"
                );
            }
            Event::ServerError(ServerError::AuthorizationViolation) => tracing::warn!(
                connection,
                "the NATS server refused this connection's credentials (authorization violation): a user, password, token, NKey or credentials file it no longer accepts; the client keeps trying to reconnect"
            ),
            Event::SlowConsumer(sid) => {
                if let Some(dropped) = self.dropped.count() {
                    tracing::warn!(
                        connection,
                        subscription = sid,
                        dropped,
                        "the NATS client dropped messages: a subscription's buffer was full (slow consumer); JetStream redelivers what a pull lost after its ack wait, replies and plain subscriptions lose it"
                    );
                }
            }
            Event::ServerError(ServerError::Other(error)) => {
                if !self.denials.record(&error) {
                    tracing::warn!(connection, %error, "NATS server error");
                }
            }
            other => tracing::debug!(connection, event = %other, "NATS client event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::deploy::tests::env;

    #[test]
    fn no_url_no_options() {
        assert_eq!(NatsOptions::from_lookup(env(&[])).unwrap(), None);
    }

    #[test]
    fn reads_auth_and_tls_and_redacts() {
        let o = NatsOptions::from_lookup(env(&[
            (ENV_URL, "nats://u:secretpw@h:4222"),
            (ENV_USER, "alice"),
            (ENV_PASSWORD, "hunter2"),
            (ENV_CA, "/ca.pem"),
            (ENV_TLS_REQUIRED, "true"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            o.auth,
            NatsAuth::UserPassword {
                user: "alice".into(),
                password: "hunter2".into()
            }
        );
        assert!(o.tls.required);
        assert_eq!(o.tls.ca_files, vec![PathBuf::from("/ca.pem")]);
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("secretpw"), "{dbg}");
        assert!(dbg.contains("alice") && dbg.contains("h:4222"));
        let t = NatsOptions::from_lookup(env(&[(ENV_URL, "x"), (ENV_TOKEN, "tok-123")]))
            .unwrap()
            .unwrap();
        assert!(!format!("{t:?}").contains("tok-123"));
        let s = NatsOptions::from_lookup(env(&[(ENV_URL, "x"), (ENV_NKEY_SEED, "SUAB")]))
            .unwrap()
            .unwrap();
        assert!(!format!("{s:?}").contains("SUAB"));
    }

    #[test]
    fn credentials_in_urls() {
        let addrs = |u: &str| -> Vec<async_nats::ServerAddr> { u.split(',').map(|a| a.parse().unwrap()).collect() };
        assert_eq!(url_auth(&addrs("nats://h:1,nats://k:2")).unwrap(), NatsAuth::None);
        assert_eq!(
            url_auth(&addrs("nats://h:1,nats://al%40ce:p%3Aw%25@k:2")).unwrap(),
            NatsAuth::UserPassword {
                user: "al@ce".into(),
                password: "p:w%".into()
            }
        );
        assert_eq!(
            url_auth(&addrs("nats://tok@h:1")).unwrap(),
            NatsAuth::Token("tok".into())
        );
        assert!(url_auth(&addrs("nats://a:b@h:1,nats://a:c@k:2")).is_err());
    }

    #[test]
    fn refuses_ambiguous_settings() {
        assert!(NatsOptions::from_lookup(env(&[(ENV_URL, "x"), (ENV_USER, "a")])).is_err());
        assert!(NatsOptions::from_lookup(env(&[(ENV_URL, "x"), (ENV_TOKEN, "t"), (ENV_CREDS, "/c")])).is_err());
        assert!(NatsOptions::from_lookup(env(&[(ENV_URL, "x"), (ENV_CERT, "/c")])).is_err());
        assert!(NatsOptions::from_lookup(env(&[(ENV_URL, "x"), (ENV_TLS_FIRST, "maybe")])).is_err());
    }

    #[test]
    fn reads_the_connect_wait() {
        let wait = |w: &str| {
            NatsOptions::from_lookup(env(&[(ENV_URL, "x"), (ENV_CONNECT_WAIT, w)])).map(|o| o.unwrap().connect_wait)
        };
        assert_eq!(wait("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(wait(" 5m ").unwrap(), Duration::from_secs(300));
        assert_eq!(wait("0").unwrap(), Duration::ZERO);
        let e = wait("soon").unwrap_err().to_string();
        assert!(e.contains(ENV_CONNECT_WAIT) && e.contains("`soon`"), "{e}");
        assert_eq!(
            NatsOptions::from_lookup(env(&[(ENV_URL, "x")]))
                .unwrap()
                .unwrap()
                .connect_wait,
            Duration::ZERO
        );
    }

    #[test]
    fn only_servers_that_do_not_answer_are_waited_for() {
        use async_nats::ConnectErrorKind as K;
        for kind in [K::Io, K::TimedOut, K::Dns] {
            assert!(waits_out(kind), "{kind}");
        }
        for kind in [
            K::Authentication,
            K::AuthorizationViolation,
            K::Tls,
            K::ServerParse,
            K::MaxReconnects,
        ] {
            assert!(!waits_out(kind), "{kind}");
        }
    }
}
