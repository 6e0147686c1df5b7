//! Authentication and TLS of the NATS transport against private nats-servers that require them:
//! user/password, token, NKey, JWT `.creds` (operator mode) and TLS (server-only and mutual), and
//! publish permissions (a refused publish is `PermissionDenied`).
//! For each: the right credentials connect and carry a JetStream round trip; wrong or missing
//! ones fail with a typed `TransportError` in bounded time; `Debug` of the options never shows
//! the secret.
//!
//! Options are built with `NatsOptions::from_lookup`, the code path of `from_env` without
//! mutating the process environment (unsound across the test threads).

use bytes::Bytes;
use cim_integrate_runtime::Envelope;
use cim_integrate_runtime::subject::{Subject, SubjectPattern};
use cim_integrate_runtime::testing::{NatsServer, server_version};
use cim_integrate_runtime::transport::nats::{
    ENV_CA, ENV_CERT, ENV_CREDS, ENV_KEY, ENV_NKEY_FILE, ENV_NKEY_SEED, ENV_PASSWORD, ENV_TLS_FIRST, ENV_TLS_REQUIRED,
    ENV_TOKEN, ENV_URL, ENV_USER, NatsAuth, NatsOptions, NatsTransport,
};
use cim_integrate_runtime::transport::{Consumer, ConsumerSpec, StreamSpec, Transport, TransportError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "fixtures/indexer.rs"]
#[allow(dead_code)]
mod indexer;

/// Upper bound for any connection attempt, successful or not.
const CONNECT_BOUND: Duration = Duration::from_secs(20);

/// Options as `from_env` would build them from these variables.
fn options(vars: &[(&str, &str)]) -> NatsOptions {
    let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut o = NatsOptions::from_lookup(|k| m.get(k).cloned())
        .expect("valid variables")
        .expect("NATS_URL set");
    // failures should come quickly
    o.request_timeout = Duration::from_secs(3);
    o
}

async fn connect(o: NatsOptions) -> Result<NatsTransport, TransportError> {
    tokio::time::timeout(CONNECT_BOUND, NatsTransport::connect(o))
        .await
        .expect("connect neither succeeded nor failed in time")
}

/// Connecting must fail with a connection error that does not reveal `secret`.
async fn assert_refused(o: NatsOptions, secret: &str, what: &str) {
    match connect(o).await {
        Ok(_) => panic!("{what}: connected"),
        Err(e) => {
            assert!(matches!(e, TransportError::Connection(_)), "{what}: {e:?}");
            if !secret.is_empty() {
                assert!(!e.to_string().contains(secret), "{what}: error shows the secret: {e}");
            }
        }
    }
}

fn assert_redacted(o: &NatsOptions, secret: &str) {
    let dbg = format!("{o:?}");
    assert!(!dbg.contains(secret), "Debug shows the secret: {dbg}");
    let dbg = format!("{o:#?}");
    assert!(!dbg.contains(secret), "Debug shows the secret: {dbg}");
}

/// ensure_stream + publish_and_wait + consume and ack one message.
async fn round_trip(t: &NatsTransport) {
    let work = async {
        t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
            .await
            .expect("ensure_stream");
        let env = Envelope::root(
            Subject::new("document.created").expect("subject"),
            Bytes::from_static(b"{}"),
        );
        let ack = t.publish_and_wait((&env).into()).await.expect("publish");
        assert_eq!(
            (&*ack.stream, ack.sequence, ack.duplicate),
            ("DOCUMENT_EVENTS", 1, false)
        );
        let spec = ConsumerSpec::new(
            "DOCUMENT_EVENTS",
            "auth-reader",
            SubjectPattern::new("document.>").expect("pattern"),
        );
        let mut c = t.consumer(&spec).await.expect("consumer");
        let d = c.next().await.expect("next");
        assert_eq!(d.subject(), "document.created");
        assert_eq!(d.envelope().expect("envelope").identity(), env.identity());
        d.ack().await.expect("ack");
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .expect("round trip in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let server = NatsServer::start_with(&["--user", "alice", "--pass", "s3cret-pw"])
        .await
        .expect("start nats-server");
    let url = server.url();

    let good = options(&[(ENV_URL, &url), (ENV_USER, "alice"), (ENV_PASSWORD, "s3cret-pw")]);
    assert_eq!(
        good.auth,
        NatsAuth::UserPassword {
            user: "alice".into(),
            password: "s3cret-pw".into()
        }
    );
    assert_redacted(&good, "s3cret-pw");
    let t = connect(good).await.expect("connect with the right password");
    round_trip(&t).await;

    // credentials inside the URL work too, and are redacted
    let in_url = options(&[(ENV_URL, &format!("nats://alice:s3cret-pw@127.0.0.1:{}", server.port()))]);
    assert_redacted(&in_url, "s3cret-pw");
    let t2 = connect(in_url).await.expect("connect with credentials in the URL");
    t2.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream exists");

    assert_refused(
        options(&[(ENV_URL, &format!("nats://alice:wrong-pw@127.0.0.1:{}", server.port()))]),
        "wrong-pw",
        "wrong password in the URL",
    )
    .await;
    assert_refused(
        options(&[(ENV_URL, &url), (ENV_USER, "alice"), (ENV_PASSWORD, "wrong-pw")]),
        "wrong-pw",
        "wrong password",
    )
    .await;
    assert_refused(
        options(&[(ENV_URL, &url), (ENV_USER, "mallory"), (ENV_PASSWORD, "s3cret-pw")]),
        "s3cret-pw",
        "wrong user",
    )
    .await;
    assert_refused(options(&[(ENV_URL, &url)]), "", "no credentials").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token() {
    let server = NatsServer::start_with(&["--auth", "tok-7f3a9c"])
        .await
        .expect("start nats-server");
    let url = server.url();

    let good = options(&[(ENV_URL, &url), (ENV_TOKEN, "tok-7f3a9c")]);
    assert_eq!(good.auth, NatsAuth::Token("tok-7f3a9c".into()));
    assert_redacted(&good, "tok-7f3a9c");
    let t = connect(good).await.expect("connect with the right token");
    round_trip(&t).await;

    // a token inside the URL
    let in_url = options(&[(ENV_URL, &format!("nats://tok-7f3a9c@127.0.0.1:{}", server.port()))]);
    assert_redacted(&in_url, "tok-7f3a9c");
    let t2 = connect(in_url).await.expect("connect with the token in the URL");
    t2.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream exists");

    assert_refused(
        options(&[(ENV_URL, &url), (ENV_TOKEN, "tok-wrong")]),
        "tok-wrong",
        "wrong token",
    )
    .await;
    assert_refused(options(&[(ENV_URL, &url)]), "", "no token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().expect("seed");
    let stranger = nkeys::KeyPair::new_user();
    let stranger_seed = stranger.seed().expect("seed");
    let config = format!(
        "authorization {{\n  users = [\n    {{ nkey: \"{}\" }}\n  ]\n}}\n",
        user.public_key()
    );
    let server = NatsServer::start_with_config(&config).await.expect("start nats-server");
    let url = server.url();

    let good = options(&[(ENV_URL, &url), (ENV_NKEY_SEED, &seed)]);
    assert_eq!(good.auth, NatsAuth::NKeySeed(seed.clone()));
    assert_redacted(&good, &seed);
    let t = connect(good).await.expect("connect with the right seed");
    round_trip(&t).await;

    // the seed from a file (trailing newline trimmed)
    let dir = tempfile::tempdir().expect("tempdir");
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).expect("write seed");
    let from_file = options(&[(ENV_URL, &url), (ENV_NKEY_FILE, seed_file.to_str().expect("utf-8"))]);
    assert_eq!(from_file.auth, NatsAuth::NKeySeed(seed.clone()));
    assert_redacted(&from_file, &seed);
    let t2 = connect(from_file).await.expect("connect with the seed file");
    t2.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream exists");

    assert_refused(
        options(&[(ENV_URL, &url), (ENV_NKEY_SEED, &stranger_seed)]),
        &stranger_seed,
        "unknown nkey",
    )
    .await;
    assert_refused(options(&[(ENV_URL, &url)]), "", "no nkey").await;

    // a malformed seed is refused without a panic, and without echoing it
    let bad = "SUNOTAVALIDSEED";
    let o = options(&[(ENV_URL, &url), (ENV_NKEY_SEED, bad)]);
    assert_redacted(&o, bad);
    match connect(o).await {
        Ok(_) => panic!("malformed seed: connected"),
        Err(e) => {
            assert!(
                matches!(e, TransportError::Connection(_) | TransportError::Invalid(_)),
                "{e:?}"
            );
            assert!(!e.to_string().contains(bad), "{e}");
        }
    }
}

/// A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, as
/// PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate from another CA.
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn make_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    (p.self_signed(&key).expect("CA"), key)
}

fn make_leaf(
    sans: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    p.distinguished_name.push(rcgen::DnType::CommonName, sans[0]);
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, ca, ca_key).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn make_pki(dir: &Path) -> Pki {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write PEM");
        p
    };
    let (ca, ca_key) = make_ca("cim test CA");
    let (sc, sk) = make_leaf(
        &["localhost", "127.0.0.1"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        &ca,
        &ca_key,
    );
    let (cc, ck) = make_leaf(&["client"], rcgen::ExtendedKeyUsagePurpose::ClientAuth, &ca, &ca_key);
    let (rogue_ca, rogue_ca_key) = make_ca("rogue CA");
    let (rc, rk) = make_leaf(
        &["client"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        &rogue_ca,
        &rogue_ca_key,
    );
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &sc),
        server_key: write("server-key.pem", &sk),
        client_cert: write("client.pem", &cc),
        client_key: write("client-key.pem", &ck),
        rogue_cert: write("rogue.pem", &rc),
        rogue_key: write("rogue-key.pem", &rk),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let server = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        s(&pki.server_cert),
        "--tlskey",
        s(&pki.server_key),
    ])
    .await
    .expect("start nats-server");
    let url = server.url();

    let good = options(&[(ENV_URL, &url), (ENV_CA, s(&pki.ca)), (ENV_TLS_REQUIRED, "true")]);
    assert!(good.tls.required);
    assert_eq!(good.tls.ca_files, vec![pki.ca.clone()]);
    let t = connect(good).await.expect("connect over TLS with the CA");
    round_trip(&t).await;
    // a tls:// URL with the CA alone works too
    let t2 = connect(options(&[
        (ENV_URL, &format!("tls://127.0.0.1:{}", server.port())),
        (ENV_CA, s(&pki.ca)),
    ]))
    .await
    .expect("connect to tls:// with the CA");
    t2.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream exists");

    // the server's certificate is not trusted without the CA
    assert_refused(options(&[(ENV_URL, &url)]), "", "no CA").await;
    assert_refused(
        options(&[(ENV_URL, &url), (ENV_TLS_REQUIRED, "true")]),
        "",
        "no CA, TLS required",
    )
    .await;
    // ... nor with another CA
    let other = tempfile::tempdir().expect("tempdir");
    let other_pki = make_pki(other.path());
    assert_refused(options(&[(ENV_URL, &url), (ENV_CA, s(&other_pki.ca))]), "", "wrong CA").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_a_plain_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let server = NatsServer::start().await.expect("start nats-server");
    assert_refused(
        options(&[(ENV_URL, &server.url()), (ENV_TLS_REQUIRED, "1")]),
        "",
        "TLS required, plain server",
    )
    .await;
    assert_refused(
        options(&[(ENV_URL, &server.url()), (ENV_CA, s(&pki.ca))]),
        "",
        "CA given, plain server",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let server = NatsServer::start_with(&[
        "--tlsverify",
        "--tlscert",
        s(&pki.server_cert),
        "--tlskey",
        s(&pki.server_key),
        "--tlscacert",
        s(&pki.ca),
    ])
    .await
    .expect("start nats-server");
    let url = server.url();

    let good = options(&[
        (ENV_URL, &url),
        (ENV_CA, s(&pki.ca)),
        (ENV_CERT, s(&pki.client_cert)),
        (ENV_KEY, s(&pki.client_key)),
    ]);
    assert_eq!(
        good.tls.client_cert,
        Some((pki.client_cert.clone(), pki.client_key.clone()))
    );
    let key_pem = std::fs::read_to_string(&pki.client_key).expect("key");
    let key_body = key_pem.lines().nth(1).expect("PEM body");
    assert_redacted(&good, key_body);
    let t = connect(good).await.expect("connect with a client certificate");
    round_trip(&t).await;

    assert_refused(
        options(&[(ENV_URL, &url), (ENV_CA, s(&pki.ca))]),
        "",
        "no client certificate",
    )
    .await;
    assert_refused(
        options(&[
            (ENV_URL, &url),
            (ENV_CA, s(&pki.ca)),
            (ENV_CERT, s(&pki.rogue_cert)),
            (ENV_KEY, s(&pki.rogue_key)),
        ]),
        "",
        "client certificate from another CA",
    )
    .await;
    // a missing certificate file is an error too, not a panic
    let missing = dir.path().join("missing.pem");
    let o = options(&[
        (ENV_URL, &url),
        (ENV_CA, s(&pki.ca)),
        (ENV_CERT, s(&missing)),
        (ENV_KEY, s(&pki.client_key)),
    ]);
    assert!(connect(o).await.is_err(), "missing client certificate file");
}

/// `NATS_TLS_FIRST` against a server with `handshake_first` (nats-server 2.10+).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_first() {
    let version = server_version().expect("nats-server version");
    if version < (2, 10, 0) {
        eprintln!("skipped: nats-server {version:?} has no handshake_first");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  handshake_first: true\n}}\n",
        s(&pki.server_cert),
        s(&pki.server_key)
    );
    let server = NatsServer::start_with_config(&config).await.expect("start nats-server");
    let url = server.url();

    let good = options(&[(ENV_URL, &url), (ENV_CA, s(&pki.ca)), (ENV_TLS_FIRST, "true")]);
    assert!(good.tls.first);
    let t = connect(good).await.expect("connect with TLS first");
    round_trip(&t).await;

    // without TLS first the client waits for an INFO that never comes: refused, in time
    assert_refused(
        options(&[(ENV_URL, &url), (ENV_CA, s(&pki.ca))]),
        "",
        "TLS first not set",
    )
    .await;
}

/// `NATS_CREDS` without an operator setup: a missing or malformed file is a typed error before
/// any connection, and `Debug` shows the path only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_file_errors() {
    let server = NatsServer::start().await.expect("start nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.creds");
    let o = options(&[(ENV_URL, &server.url()), (ENV_CREDS, s(&missing))]);
    assert_eq!(o.auth, NatsAuth::CredentialsFile(missing.clone()));
    match connect(o).await {
        Ok(_) => panic!("missing creds file: connected"),
        Err(e) => assert!(matches!(e, TransportError::Invalid(_)), "{e:?}"),
    }
    let garbage = dir.path().join("garbage.creds");
    std::fs::write(&garbage, "not-a-jwt SUSECRETSEEDTEXT\n").expect("write");
    let o = options(&[(ENV_URL, &server.url()), (ENV_CREDS, s(&garbage))]);
    assert_redacted(&o, "SUSECRETSEEDTEXT");
    match connect(o).await {
        Ok(_) => panic!("malformed creds file: connected"),
        Err(e) => {
            assert!(
                matches!(e, TransportError::Invalid(_) | TransportError::Connection(_)),
                "{e:?}"
            );
            assert!(!e.to_string().contains("SUSECRETSEEDTEXT"), "{e}");
        }
    }
}

/// A signed NATS JWT (v2) for `claims`, issued by `issuer` about `subject`. The `jti` is the
/// base32 (no padding) SHA-256 of the claims without it, as the Go `jwt` library computes it.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    nats_jwt_expiring(issuer, subject, name, nats, None)
}

/// As [`nats_jwt`], valid until `expires` (seconds since the epoch) if given.
fn nats_jwt_expiring(
    issuer: &nkeys::KeyPair,
    subject: &str,
    name: &str,
    nats: serde_json::Value,
    expires: Option<u64>,
) -> String {
    use sha2::Digest;
    let iat = unix_now();
    let mut claims = serde_json::json!({
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    if let Some(exp) = expires {
        claims["exp"] = serde_json::Value::from(exp);
    }
    let jti = data_encoding::BASE32_NOPAD.encode(&sha2::Sha256::digest(claims.to_string().as_bytes()));
    claims["jti"] = serde_json::Value::String(jti);
    let b64 = |v: &serde_json::Value| data_encoding::BASE64URL_NOPAD.encode(v.to_string().as_bytes());
    let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
    let sig = issuer.sign(signing_input.as_bytes()).expect("sign");
    format!("{signing_input}.{}", data_encoding::BASE64URL_NOPAD.encode(&sig))
}

/// An account JWT with unlimited core and JetStream limits.
fn account_jwt(operator: &nkeys::KeyPair, account: &nkeys::KeyPair, name: &str) -> String {
    nats_jwt(
        operator,
        &account.public_key(),
        name,
        serde_json::json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
            },
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account",
            "version": 2,
        }),
    )
}

/// Seconds since the epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A `.creds` file for `user`, issued by `account`, in the format `nsc` writes.
fn user_creds(account: &nkeys::KeyPair, user: &nkeys::KeyPair, name: &str) -> String {
    user_creds_expiring(account, user, name, None)
}

/// As [`user_creds`], the JWT valid until `expires` (seconds since the epoch) if given.
fn user_creds_expiring(account: &nkeys::KeyPair, user: &nkeys::KeyPair, name: &str, expires: Option<u64>) -> String {
    let jwt = nats_jwt_expiring(
        account,
        &user.public_key(),
        name,
        serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user",
            "version": 2,
        }),
        expires,
    );
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n",
        user.seed().expect("seed")
    )
}

/// A server in operator mode (JWT auth, memory resolver) and the account it knows, whose users
/// may connect.
async fn operator_mode_server() -> (NatsServer, nkeys::KeyPair) {
    let operator = nkeys::KeyPair::new_operator();
    // JetStream in operator mode needs a system account
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "cim-op",
        serde_json::json!({ "system_account": system.public_key(), "type": "operator", "version": 2 }),
    );
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({ "type": "account", "version": 2 }),
    );
    let config = format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{system_jwt}\"\n  {}: \"{}\"\n}}\n",
        system.public_key(),
        system.public_key(),
        account.public_key(),
        account_jwt(&operator, &account, "cim-acc")
    );
    let server = NatsServer::start_with_config(&config).await.expect("start nats-server");
    (server, account)
}

/// Credentials rotated on disk: the host's user JWT expires (the server closes the connection)
/// after a new `.creds` file replaced the old one, and the reconnection presents the new one.
/// async-nats's own `credentials_file` read the file once: every reconnection was refused
/// until the host restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotated_on_disk_are_used_by_the_next_reconnection() {
    let (server, account) = operator_mode_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("service.creds");
    let expiring = user_creds_expiring(&account, &nkeys::KeyPair::new_user(), "svc-1", Some(unix_now() + 3));
    std::fs::write(&creds, expiring).expect("write creds");
    let t = connect(options(&[(ENV_URL, &server.url()), (ENV_CREDS, s(&creds))]))
        .await
        .expect("connect");
    round_trip(&t).await;
    let connects = t
        .client()
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed);

    // The rotation: a new user JWT, written before the old one expires.
    std::fs::write(&creds, user_creds(&account, &nkeys::KeyPair::new_user(), "svc-2")).expect("write creds");
    let reconnected = async {
        while t
            .client()
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            == connects
            || t.client().connection_state() != async_nats::connection::State::Connected
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), reconnected)
        .await
        .expect("the expired connection closed by the server, and a new one made with the new credentials");
    let env = Envelope::root(Subject::new("document.created").expect("subject"), "{}");
    let ack = tokio::time::timeout(Duration::from_secs(10), t.publish_and_wait(env.into()))
        .await
        .expect("in time")
        .expect("published with the new credentials");
    assert_eq!(ack.sequence, 2);
}

/// `NATS_CREDS` against a server in operator mode (JWT auth, memory resolver): the user's
/// `.creds` file connects and carries a JetStream round trip; a user issued by an account the
/// server does not know, or whose JWT carries a forged signature, is refused; `Debug` shows
/// neither the seed nor the JWT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_file_operator_mode() {
    let (server, account) = operator_mode_server().await;
    let url = server.url();
    let user = nkeys::KeyPair::new_user();

    let dir = tempfile::tempdir().expect("tempdir");
    let creds_text = user_creds(&account, &user, "cim-user");
    let creds = dir.path().join("user.creds");
    std::fs::write(&creds, &creds_text).expect("write creds");
    let seed = user.seed().expect("seed");
    let jwt_line = creds_text.lines().nth(1).expect("JWT line").to_owned();

    let good = options(&[(ENV_URL, &url), (ENV_CREDS, s(&creds))]);
    assert_eq!(good.auth, NatsAuth::CredentialsFile(creds.clone()));
    assert_redacted(&good, &seed);
    assert_redacted(&good, &jwt_line);
    let t = connect(good).await.expect("connect with the creds file");
    round_trip(&t).await;

    // no credentials at all
    assert_refused(options(&[(ENV_URL, &url)]), "", "no creds").await;

    // a user issued by another account (signed with a key the operator never vouched for)
    let rogue_account = nkeys::KeyPair::new_account();
    let rogue_user = nkeys::KeyPair::new_user();
    let rogue_seed = rogue_user.seed().expect("seed");
    let rogue = dir.path().join("rogue.creds");
    std::fs::write(&rogue, user_creds(&rogue_account, &rogue_user, "rogue")).expect("write creds");
    let o = options(&[(ENV_URL, &url), (ENV_CREDS, s(&rogue))]);
    assert_redacted(&o, &rogue_seed);
    assert_refused(o, &rogue_seed, "user of an unknown account").await;

    // the right account as issuer, but the signature made with another key
    let genuine = user_creds(&account, &rogue_user, "forged");
    let jwt = genuine.lines().nth(1).expect("JWT line");
    let signing_input = &jwt[..jwt.rfind('.').expect("signed JWT")];
    let sig = rogue_account.sign(signing_input.as_bytes()).expect("sign");
    let forged_jwt = format!("{signing_input}.{}", data_encoding::BASE64URL_NOPAD.encode(&sig));
    let forged = dir.path().join("forged.creds");
    std::fs::write(&forged, genuine.replace(jwt, &forged_jwt)).expect("write creds");
    assert_refused(
        options(&[(ENV_URL, &url), (ENV_CREDS, s(&forged))]),
        &rogue_seed,
        "user JWT signed with another key",
    )
    .await;
}

/// The server configuration of [`a_refused_publish_is_permission_denied_and_waits_for_the_grant`]:
/// `admin` may do anything; `svc` may publish anywhere but to `denied`.
fn permissions_config(denied: &[&str]) -> String {
    let deny = denied.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "authorization {{ users: [ {{ user: admin, password: a }}, \
         {{ user: svc, password: s, permissions: {{ publish: {{ allow: [\">\"], deny: [{deny}] }} }} }} ] }}"
    )
}

/// A server configured by [`permissions_config`].
async fn permissions_server(denied: &[&str]) -> NatsServer {
    NatsServer::start_with_config(&permissions_config(denied))
        .await
        .expect("start nats-server")
}

/// Options for `user` on `server`, credentials in the URL, with a short request timeout (a
/// refused publish is known after one).
fn as_user(server: &NatsServer, user: &str, password: &str) -> NatsOptions {
    let mut o = NatsOptions::new(server.url().replace("nats://", &format!("nats://{user}:{password}@")));
    o.request_timeout = Duration::from_secs(2);
    o
}

/// A publish the user may not make: the server drops it and tells the connection, not the
/// publish. It is reported as `PermissionDenied` after one timeout (not a timeout after every
/// retry), a JetStream request the same way (provisioning reports it at once instead of
/// retrying for a minute), and a handler whose publish is refused is deferred, never
/// dead-lettered, and goes through once the operator grants the permission (a config reload; on
/// nats-server 2.9, a reload and a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_is_permission_denied_and_waits_for_the_grant() {
    use cim_integrate_runtime::service::Service;
    use std::time::Instant;
    let mut server = permissions_server(&["search.>", "$JS.API.STREAM.CREATE.PERSON_EVENTS", "$KV.refused.>"]).await;
    let as_user = |user: &str, password: &str| as_user(&server, user, password);
    let admin = connect(as_user("admin", "a")).await.expect("admin");
    for domain in ["search", "document"] {
        admin
            .ensure_stream(&StreamSpec::for_domain(domain, None).expect("spec"))
            .await
            .expect("stream");
    }
    let t = connect(as_user("svc", "s")).await.expect("svc");

    let began = Instant::now();
    let refused = t
        .publish_and_wait(Envelope::root(Subject::new("search.indexed").expect("subject"), "{}").into())
        .await
        .expect_err("refused");
    assert_eq!(
        refused,
        TransportError::PermissionDenied {
            subject: "search.indexed".into()
        }
    );
    assert!(refused.is_transient());
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "one timeout, not one per retry: {:?}",
        began.elapsed()
    );

    let began = Instant::now();
    let api = t
        .ensure_stream(&StreamSpec::for_domain("person", None).expect("spec"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&api, TransportError::PermissionDenied { subject } if subject == "$JS.API.STREAM.CREATE.PERSON_EVENTS"),
        "{api:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "reported at once: {:?}",
        began.elapsed()
    );

    // A key-value write the same way (the bucket's handle knows the connection's refusals).
    use cim_integrate_runtime::transport::KeyValue as _;
    let kv = t
        .key_value(&cim_integrate_runtime::transport::KvSpec::new("refused"))
        .await
        .expect("bucket");
    let write = kv.put("k1", Bytes::from_static(b"v")).await.expect_err("refused");
    assert!(
        matches!(&write, cim_integrate_runtime::transport::KvError::Transport(TransportError::PermissionDenied { subject }) if subject.ends_with("$KV.refused.k1")),
        "{write:?}"
    );

    let svc = Service::builder(t.clone(), "perms")
        .handler("search", indexer::indexer())
        .start()
        .await
        .expect("start");
    indexer::publish_created(&t).await;
    indexer::deferred_until(
        || svc.handler_stats("search-indexer").expect("stats"),
        indexer::reconfigure(
            &mut server,
            &permissions_config(&["$JS.API.STREAM.CREATE.PERSON_EVENTS"]),
        ),
    )
    .await;
    assert_eq!(
        indexer::stream_messages(&admin, "SEARCH_EVENTS").await,
        Some(1),
        "the handler's event stored once"
    );
    svc.shutdown(Duration::from_secs(5)).await;
}

/// The operator's tools open buckets a host made (they provision nothing): a write the server
/// refuses there is `PermissionDenied` too, after one timeout, not a timeout that reads as
/// "try again" (`ops saga forget` by a user who may read the saga buckets but not write them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_refused_write_is_permission_denied() {
    use cim_integrate_runtime::ops::{Ops, OpsError};
    use cim_integrate_runtime::saga::conformance::{Order, Shop};
    use cim_integrate_runtime::saga::{SagaOutcome, SagaRunner};
    use std::time::Instant;
    let server = permissions_server(&["$KV.cim_saga_shop_settled.>"]).await;
    let as_user = |user: &str, password: &str| as_user(&server, user, password);
    let admin = connect(as_user("admin", "a")).await.expect("admin");
    let runner = SagaRunner::builder(admin, Shop::default())
        .build()
        .await
        .expect("runner");
    let outcome = runner.start("o-1", Order::default()).await.expect("start");
    assert_eq!(outcome, SagaOutcome::Completed);
    runner.settled().await.expect("settled");

    let ops = Ops::new(connect(as_user("svc", "s")).await.expect("svc"));
    let began = Instant::now();
    let refused = ops.forget_saga("shop", "o-1").await.expect_err("refused");
    assert!(
        matches!(&refused, OpsError::Transport(TransportError::PermissionDenied { subject }) if subject.ends_with("$KV.cim_saga_shop_settled.o-1")),
        "{refused:?}"
    );
    assert!(!refused.is_transient(), "an operator's fix, not a wait: {refused:?}");
    assert!(
        began.elapsed() < Duration::from_secs(6),
        "one timeout: {:?}",
        began.elapsed()
    );
    // Nothing was forgotten.
    assert!(ops.saga("shop", "o-1").await.expect("view").summary.settled);
}
