//! Security and limits (issue 7): TLS and mutual TLS with certificates made
//! here by rcgen, bearer tokens (flag, env, SIGHUP reload), every server
//! limit, hostile bytes and silent connections, least privilege.
//!
//! Servers run on 127.0.0.1 port 0, as the built binary or in-process; no
//! test sleeps to wait for something: each waits for a line, a socket event
//! or a signal, with a bound.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use common::*;
use fetchd::ServerConfig;
use fetchd::ServerTls;
use fetchd::Tokens;
use fetchd::{Client, ConnectOptions, Target};
use fetchd::{TailEvent, TailStart};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::Code;

/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------

/// A CA, certificates it signed, and a second CA nobody trusts; all as PEM
/// files in a temporary folder.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    /// Signed by the CA, but for `other.example` only.
    wrong_name_cert: PathBuf,
    wrong_name_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate from the other CA.
    rogue_client_cert: PathBuf,
    rogue_client_key: PathBuf,
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn new_leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str], client: bool) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let write = |name: &str, text: &str| {
            std::fs::write(path(name), text).unwrap();
            path(name)
        };
        let (ca_pem, ca) = new_ca("fetchd test CA");
        let (_, rogue) = new_ca("somebody else's CA");
        let (server_cert, server_key) = new_leaf(&ca, &["localhost", "127.0.0.1"], false);
        let (wrong_cert, wrong_key) = new_leaf(&ca, &["other.example"], false);
        let (client_cert, client_key) = new_leaf(&ca, &["client.example"], true);
        let (rogue_cert, rogue_key) = new_leaf(&rogue, &["client.example"], true);
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            wrong_name_cert: write("wrong-name.pem", &wrong_cert),
            wrong_name_key: write("wrong-name.key", &wrong_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            rogue_client_cert: write("rogue-client.pem", &rogue_cert),
            rogue_client_key: write("rogue-client.key", &rogue_key),
            _dir: dir,
        }
    }

    /// `fetchd serve` of `root` with TLS from the test CA's server
    /// certificate, and `extra` flags after it.
    fn serve(&self, root: &Path, extra: &[&str]) -> ServerProcess {
        let mut args = vec![
            "--tls-cert",
            s(&self.server_cert),
            "--tls-key",
            s(&self.server_key),
        ];
        args.extend_from_slice(extra);
        ServerProcess::start(root, &args)
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A served folder with one 100 kB file, `blob.bin`.
fn served() -> (tempfile::TempDir, Vec<u8>) {
    let root = tempfile::tempdir().unwrap();
    let data = random_bytes(100_000, 7);
    std::fs::write(root.path().join("blob.bin"), &data).unwrap();
    (root, data)
}

fn https_url(server: &ServerProcess, host: &str) -> String {
    format!("https://{host}:{}", server.addr.port())
}

/// `fetchd ARGS...` in `cwd` (no --server added).
fn fetchd_in(cwd: &Path, args: &[&str]) -> Run {
    run_in(cwd, fetchd().args(args))
}

// ---------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------

/// `fetchd get` over https with `--ca-cert` fetches the file, by name and
/// by IP address, with the TLS options before or after the verb.
#[test]
fn tls_round_trip() {
    let pki = Pki::new();
    let (root, data) = served();
    let server = pki.serve(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let url = https_url(&server, "localhost");
    fetchd_in(
        cwd.path(),
        &["--server", &url, "--ca-cert", s(&pki.ca), "get", "blob.bin"],
    )
    .expect_code(0);
    assert_eq!(std::fs::read(cwd.path().join("blob.bin")).unwrap(), data);

    let url = https_url(&server, "127.0.0.1");
    fetchd_in(
        cwd.path(),
        &[
            "get",
            "blob.bin",
            "-o",
            "copy.bin",
            "--server",
            &url,
            "--ca-cert",
            s(&pki.ca),
        ],
    )
    .expect_code(0);
    assert_eq!(std::fs::read(cwd.path().join("copy.bin")).unwrap(), data);

    let run = fetchd_in(
        cwd.path(),
        &["ls", "--server", &url, "--ca-cert", s(&pki.ca)],
    );
    run.expect_code(0);
    assert!(run.stdout_str().contains("blob.bin"), "{}", run.describe());
}

/// A self-signed server certificate given to the client as `--ca-cert`
/// works, whether or not it is marked as a CA (as `openssl req -x509` does);
/// another self-signed certificate is not trusted.
#[test]
fn self_signed_certificate_as_ca_cert() {
    let (root, data) = served();
    let dir = tempfile::tempdir().unwrap();
    let mut made = Vec::new();
    for (name, is_ca) in [("plain", false), ("marked-ca", true)] {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.path().join(format!("{name}.pem"));
        let key_path = dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        made.push((cert_path, key_path));
    }
    for (i, (cert, key)) in made.iter().enumerate() {
        let server =
            ServerProcess::start(root.path(), &["--tls-cert", s(cert), "--tls-key", s(key)]);
        let cwd = tempfile::tempdir().unwrap();
        let url = https_url(&server, "localhost");
        client(&url, cwd.path(), &["--ca-cert", s(cert), "get", "blob.bin"]).expect_code(0);
        assert_eq!(std::fs::read(cwd.path().join("blob.bin")).unwrap(), data);
        let other = &made[1 - i].0;
        client(
            &url,
            cwd.path(),
            &["--ca-cert", s(other), "get", "blob.bin", "-o", "x"],
        )
        .expect_code(1)
        .expect_stderr("not trusted");
    }
}

/// Without `--ca-cert` the test CA is unknown: exit 1 and a message that
/// says the certificate is not trusted and what to pass.
#[test]
fn tls_without_ca_cert_is_a_clear_error() {
    let pki = Pki::new();
    let (root, _) = served();
    let server = pki.serve(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let run = client(
        &https_url(&server, "localhost"),
        cwd.path(),
        &["get", "blob.bin"],
    );
    run.expect_code(1).expect_stderr("--ca-cert");
    assert!(
        run.stderr.contains("not trusted") || run.stderr.contains("no system CA certificates"),
        "{}",
        run.describe()
    );
    assert!(!cwd.path().join("blob.bin").exists());
}

/// A certificate for another name: exit 1, "name mismatch", and the names
/// the certificate is valid for.
#[test]
fn tls_name_mismatch_is_named() {
    let pki = Pki::new();
    let (root, _) = served();
    let server = ServerProcess::start(
        root.path(),
        &[
            "--tls-cert",
            s(&pki.wrong_name_cert),
            "--tls-key",
            s(&pki.wrong_name_key),
        ],
    );
    let cwd = tempfile::tempdir().unwrap();
    let run = client(
        &https_url(&server, "127.0.0.1"),
        cwd.path(),
        &["--ca-cert", s(&pki.ca), "get", "blob.bin"],
    );
    run.expect_code(1)
        .expect_stderr("name mismatch")
        .expect_stderr("other.example");
}

/// https:// to a plain server and http:// to a TLS server fail with exit 1
/// and a message that says which scheme the server wants, not a hang.
#[test]
fn tls_scheme_confusion_fails_cleanly() {
    let pki = Pki::new();
    let (root, _) = served();
    let plain = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let run = client(
        &https_url(&plain, "127.0.0.1"),
        cwd.path(),
        &["--ca-cert", s(&pki.ca), "get", "blob.bin"],
    );
    run.expect_code(1)
        .expect_stderr("did not answer with TLS; is it serving plain http://");

    let tls = pki.serve(root.path(), &[]);
    let run = client(&tls.url, cwd.path(), &["get", "blob.bin"]);
    run.expect_code(1)
        .expect_stderr("connect to it with https://");
}

/// Mutual TLS: a client certificate from the CA gets in; none, or one from
/// another CA, gets exit 1 and a message saying which.
#[test]
fn mutual_tls() {
    let pki = Pki::new();
    let (root, data) = served();
    let server = pki.serve(root.path(), &["--client-ca", s(&pki.ca)]);
    let url = https_url(&server, "localhost");
    let cwd = tempfile::tempdir().unwrap();
    client(
        &url,
        cwd.path(),
        &[
            "--ca-cert",
            s(&pki.ca),
            "--client-cert",
            s(&pki.client_cert),
            "--client-key",
            s(&pki.client_key),
            "get",
            "blob.bin",
        ],
    )
    .expect_code(0);
    assert_eq!(std::fs::read(cwd.path().join("blob.bin")).unwrap(), data);

    let run = client(
        &url,
        cwd.path(),
        &["--ca-cert", s(&pki.ca), "get", "blob.bin", "-o", "none.bin"],
    );
    run.expect_code(1)
        .expect_stderr("requires a client certificate")
        .expect_stderr("--client-cert");

    let run = client(
        &url,
        cwd.path(),
        &[
            "--ca-cert",
            s(&pki.ca),
            "--client-cert",
            s(&pki.rogue_client_cert),
            "--client-key",
            s(&pki.rogue_client_key),
            "get",
            "blob.bin",
            "-o",
            "rogue.bin",
        ],
    );
    run.expect_code(1)
        .expect_stderr("does not trust the client certificate");
    assert!(!cwd.path().join("none.bin").exists() && !cwd.path().join("rogue.bin").exists());
}

/// Unreadable or wrong certificate files: the server refuses to start
/// (non-zero, before `listening on`) and the client exits 1, each naming
/// the file; half a client identity is a usage error.
#[test]
fn bad_certificate_files_are_named() {
    let pki = Pki::new();
    let (root, _) = served();
    let missing = root.path().join("nowhere.pem");
    let garbage = root.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let serve = |extra: &[&str]| {
        let mut cmd = fetchd();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--root"])
            .arg(root.path())
            .args(extra);
        run(&mut cmd)
    };
    let run = serve(&["--tls-cert", s(&missing), "--tls-key", s(&pki.server_key)]);
    assert_ne!(run.code(), 0, "{}", run.describe());
    run.expect_stderr("nowhere.pem");
    assert!(
        !run.stdout_str().contains("listening"),
        "{}",
        run.describe()
    );

    let run = serve(&["--tls-cert", s(&pki.server_cert), "--tls-key", s(&garbage)]);
    assert_ne!(run.code(), 0, "{}", run.describe());
    run.expect_stderr("garbage.pem")
        .expect_stderr("no private key");

    // The key of another certificate.
    let run = serve(&[
        "--tls-cert",
        s(&pki.server_cert),
        "--tls-key",
        s(&pki.client_key),
    ]);
    assert_ne!(run.code(), 0, "{}", run.describe());
    run.expect_stderr("server.pem");

    let run = serve(&[
        "--tls-cert",
        s(&pki.server_cert),
        "--tls-key",
        s(&pki.server_key),
        "--client-ca",
        s(&garbage),
    ]);
    assert_ne!(run.code(), 0, "{}", run.describe());
    run.expect_stderr("garbage.pem")
        .expect_stderr("no certificate");

    let cwd = tempfile::tempdir().unwrap();
    client(
        "https://127.0.0.1:9",
        cwd.path(),
        &["--ca-cert", s(&missing), "get", "x"],
    )
    .expect_code(1)
    .expect_stderr("nowhere.pem");
    client(
        "https://127.0.0.1:9",
        cwd.path(),
        &["--client-cert", s(&pki.client_cert), "get", "x"],
    )
    .expect_code(2)
    .expect_stderr("--client-key");
}

// ---------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------

const GOOD_TOKEN: &str = "s3cret-token-for-tests";
const WRONG_TOKEN: &str = "wrong-token-never-shown";

/// A token file holding `tokens`, one a line with some padding.
fn token_file(dir: &Path, tokens: &[&str]) -> PathBuf {
    let path = dir.join("tokens");
    let mut text = String::from("\n");
    for token in tokens {
        text.push_str(&format!("  {token}\t\n\n"));
    }
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// Missing and wrong tokens get exit 1 with the contract's message; the
/// right one works through --token (before or after the verb) and through
/// FETCHD_TOKEN; no token shows up in any output, even at debug level.
#[test]
fn tokens_missing_wrong_right() {
    let (root, data) = served();
    let secrets = tempfile::tempdir().unwrap();
    let file = token_file(secrets.path(), &["another-token", GOOD_TOKEN]);
    let server = ServerProcess::start_with_env(
        root.path(),
        &["--token-file", s(&file)],
        &[("RUST_LOG", "debug")],
    );
    let cwd = tempfile::tempdir().unwrap();

    let run = client(&server.url, cwd.path(), &["get", "blob.bin"]);
    run.expect_code(1)
        .expect_stderr("missing or wrong token (check --token or FETCHD_TOKEN)");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.describe());

    let run = run_in(
        cwd.path(),
        fetchd()
            .args([
                "--server",
                &server.url,
                "--token",
                WRONG_TOKEN,
                "get",
                "blob.bin",
            ])
            .env("RUST_LOG", "debug"),
    );
    run.expect_code(1).expect_stderr("missing or wrong token");
    assert!(!run.stderr.contains(WRONG_TOKEN), "{}", run.describe());
    assert!(!cwd.path().join("blob.bin").exists());

    client(
        &server.url,
        cwd.path(),
        &["get", "blob.bin", "--token", GOOD_TOKEN],
    )
    .expect_code(0);
    assert_eq!(std::fs::read(cwd.path().join("blob.bin")).unwrap(), data);

    let run = run_in(
        cwd.path(),
        fetchd()
            .args(["--server", &server.url, "get", "blob.bin", "-o", "env.bin"])
            .env("FETCHD_TOKEN", GOOD_TOKEN)
            .env("RUST_LOG", "debug"),
    );
    run.expect_code(0);
    assert!(!run.stderr.contains(GOOD_TOKEN), "{}", run.describe());
    assert_eq!(std::fs::read(cwd.path().join("env.bin")).unwrap(), data);

    let logged = server.stderr_lines().join("\n");
    assert!(
        logged.contains("refused a call without a valid token"),
        "{logged}"
    );
    assert!(
        !logged.contains(GOOD_TOKEN) && !logged.contains(WRONG_TOKEN),
        "a token reached the server log:\n{logged}"
    );
}

/// `fetchd get --help` shows no token value even when FETCHD_TOKEN is set.
#[test]
fn help_hides_the_token() {
    let run = run(fetchd()
        .args(["get", "--help"])
        .env("FETCHD_TOKEN", GOOD_TOKEN));
    run.expect_code(0);
    assert!(!run.stdout_str().contains(GOOD_TOKEN), "{}", run.describe());
}

/// In-process server with `tokens`.
fn serve_with_tokens(root: &Path, tokens: &[&str]) -> InProcessServer {
    let mut config = ServerConfig::new(root);
    config.grace = Duration::from_secs(2);
    config.tokens = Some(Tokens::from_list(tokens));
    InProcessServer::start(config)
}

/// Health answers without a token; reflection (v1 and v1alpha) and the
/// file service do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_open_reflection_is_not() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let (root, _) = served();
    let server = serve_with_tokens(root.path(), &[GOOD_TOKEN]);
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let health = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "fetchd.v1.Fetchd".into(),
        })
        .await
        .expect("health without a token")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let list = || {
        tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let refused = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(list())
        .await
        .expect_err("reflection without a token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(refused.message(), "missing or wrong token", "{refused:?}");

    let alpha = raw_call(
        &channel,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Bytes::new(),
        None,
    )
    .await;
    assert_eq!(alpha.code(), Code::Unauthenticated, "{alpha:?}");

    let mut request = tonic::Request::new(list());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {GOOD_TOKEN}").parse().unwrap(),
    );
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(request)
        .await
        .expect("reflection with the token")
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    assert!(
        format!("{answer:?}").contains("fetchd.v1.Fetchd"),
        "{answer:?}"
    );

    let target = Target::parse(&server.url).unwrap();
    let unauthenticated = Client::connect(&target, &ConnectOptions::default())
        .await
        .unwrap();
    let err = unauthenticated.stat("blob.bin", false).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let authenticated = Client::connect(
        &target,
        &ConnectOptions {
            token: Some(GOOD_TOKEN.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    authenticated.stat("blob.bin", false).await.unwrap();
}

/// SIGHUP re-reads the token file: the old token stops working and the new
/// one works; a bad file on the next SIGHUP keeps the tokens in force.
#[test]
fn sighup_rereads_the_token_file() {
    let (root, _) = served();
    let secrets = tempfile::tempdir().unwrap();
    let file = token_file(secrets.path(), &["old-token"]);
    let server = ServerProcess::start_with_env(
        root.path(),
        &["--token-file", s(&file)],
        &[("RUST_LOG", "info")],
    );
    let cwd = tempfile::tempdir().unwrap();
    let stat = |token: &str| {
        client(
            &server.url,
            cwd.path(),
            &["--token", token, "stat", "blob.bin"],
        )
    };
    stat("old-token").expect_code(0);
    stat("new-token").expect_code(1);

    token_file(secrets.path(), &["new-token"]);
    hangup(&server);
    server.wait_for_stderr("re-read the token file", WAIT);
    stat("new-token").expect_code(0);
    stat("old-token")
        .expect_code(1)
        .expect_stderr("missing or wrong token");

    std::fs::write(&file, "\n\n").unwrap();
    hangup(&server);
    server.wait_for_stderr("previous tokens stay", WAIT);
    stat("new-token").expect_code(0);
}

fn hangup(server: &ServerProcess) {
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
}

/// A token file that is missing or holds no token stops `serve` before it
/// listens.
#[test]
fn unusable_token_file_refuses_to_start() {
    let (root, _) = served();
    let secrets = tempfile::tempdir().unwrap();
    let empty = token_file(secrets.path(), &[]);
    for file in [secrets.path().join("absent"), empty] {
        let run = run(fetchd()
            .args(["serve", "--listen", "127.0.0.1:0", "--root"])
            .arg(root.path())
            .arg("--token-file")
            .arg(&file));
        assert_ne!(run.code(), 0, "{}", run.describe());
        assert!(
            !run.stdout_str().contains("listening"),
            "{}",
            run.describe()
        );
        run.expect_stderr(file.file_name().unwrap().to_str().unwrap());
    }
}

// ---------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------

fn in_process(root: &Path, tune: impl FnOnce(&mut ServerConfig)) -> InProcessServer {
    let mut config = ServerConfig::new(root);
    config.grace = Duration::from_secs(2);
    tune(&mut config);
    InProcessServer::start(config)
}

async fn connect(url: &str) -> Client {
    Client::connect(&Target::parse(url).unwrap(), &ConnectOptions::default())
        .await
        .unwrap()
}

/// RESOURCE_EXHAUSTED saying which limit (in words: a server's message
/// names no command-line flag).
fn assert_exhausted(err: fetchd::Error, limit: &str) {
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    let message = err.to_string();
    assert!(message.contains(limit), "{message}");
    assert!(!message.contains("--"), "{message}");
}

/// --max-transfers: a second read while one is held gets
/// RESOURCE_EXHAUSTED naming the limit; stat and list still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_transfers_reached() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("big.bin"), random_bytes(48 << 20, 3)).unwrap();
    std::fs::write(root.path().join("small.txt"), b"small\n").unwrap();
    let server = in_process(root.path(), |config| config.max_transfers = 1);
    let client = connect(&server.url).await;
    let mut held = client.read("big.bin", 0, None).await.unwrap();
    held.next().await.unwrap().expect("the header");
    let other = connect(&server.url).await;
    let err = match other.read("big.bin", 0, None).await {
        Ok(mut stream) => stream.next().await.unwrap_err(),
        Err(err) => err,
    };
    assert_exhausted(err, "concurrent transfers");
    other.stat("small.txt", false).await.unwrap();
    drop(held);
}

/// --max-tails: a second tail while one is open gets RESOURCE_EXHAUSTED
/// naming the limit; other calls still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tails_reached() {
    let (root, _) = served();
    std::fs::write(root.path().join("app.log"), b"one\n").unwrap();
    let server = in_process(root.path(), |config| config.max_tails = 1);
    let client = connect(&server.url).await;
    let mut open = client
        .tail("app.log", TailStart::LastLines(0), true)
        .await
        .unwrap();
    assert!(matches!(
        open.next().await.unwrap(),
        Some(TailEvent::Notice { .. })
    ));
    let err = match client.tail("app.log", TailStart::LastLines(0), true).await {
        Ok(mut stream) => stream.next().await.unwrap_err(),
        Err(err) => err,
    };
    assert_exhausted(err, "concurrent tails");
    client.stat("blob.bin", false).await.unwrap();
}

/// --max-connections: with every slot taken, a new client's call waits (its
/// connection sits in the listen backlog) and is served once a connection
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_reached() {
    let (root, data) = served();
    let server = in_process(root.path(), |config| config.max_connections = 1);
    let first = connect(&server.url).await;
    first.stat("blob.bin", false).await.unwrap();
    let url = server.url.clone();
    let mut waiting = tokio::spawn(async move {
        let client = connect(&url).await;
        client
            .stat("blob.bin", true)
            .await
            .map(|stat| stat.entry.size)
    });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
    assert!(early.is_err(), "served beyond --max-connections: {early:?}");
    drop(first);
    let size = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("served once the first connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(size, data.len() as u64);
}

/// --max-streams-per-connection: with two tails open on one connection a
/// third call on it gets RESOURCE_EXHAUSTED naming the limit, while another
/// connection is served, and the first is again once a tail ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_per_connection_reached() {
    let (root, _) = served();
    std::fs::write(root.path().join("app.log"), b"one\n").unwrap();
    let server = in_process(root.path(), |config| config.max_streams_per_connection = 2);
    let client = connect(&server.url).await;
    let mut first = client
        .tail("app.log", TailStart::LastLines(0), true)
        .await
        .unwrap();
    let mut second = client
        .tail("app.log", TailStart::LastLines(0), true)
        .await
        .unwrap();
    first.next().await.unwrap();
    second.next().await.unwrap();
    let err = client.stat("blob.bin", false).await.unwrap_err();
    assert_exhausted(err, "concurrent calls on one connection");
    connect(&server.url)
        .await
        .stat("blob.bin", false)
        .await
        .unwrap();
    drop(first);
    // The server counts the call out when it notices the reset; retry for a
    // bounded time rather than guess how long that takes.
    let deadline = Instant::now() + WAIT;
    loop {
        match client.stat("blob.bin", false).await {
            Ok(_) => break,
            Err(err) if Instant::now() < deadline => {
                assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
                tokio::task::yield_now().await;
            }
            Err(err) => panic!("the slot was never freed: {err}"),
        }
    }
    drop(second);
}

/// --max-request-bytes: a request message over the limit gets
/// RESOURCE_EXHAUSTED naming the limit; the same connection then serves a
/// normal request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_request_bytes_reached() {
    let (root, _) = served();
    let server = in_process(root.path(), |config| config.max_request_bytes = 1024);
    let client = connect(&server.url).await;
    let long = "a/".repeat(1000);
    let err = client.stat(&long, false).await.unwrap_err();
    assert_exhausted(err, "over the server's limit of 1024 bytes");
    let err = match client.read(&long, 0, None).await {
        Ok(mut stream) => stream.next().await.unwrap_err(),
        Err(err) => err,
    };
    assert_exhausted(err, "over the server's limit of 1024 bytes");
    client.stat("blob.bin", false).await.unwrap();
}

/// A raw HTTP/2 connection: handshake done, connection task running; the
/// receiver reports when the server closes it.
async fn raw_h2(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = connection.await;
        let _ = closed_tx.send(());
    });
    (send, closed_rx)
}

/// One gRPC call over a raw HTTP/2 connection with `body` as the request
/// body (framed or not); the grpc-status it ends with, or `None` when the
/// stream was reset. Gives up (None) after `WAIT`.
async fn h2_call(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: Bytes,
) -> Option<String> {
    let request = http::Request::post(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let call = async {
        let mut ready = send.clone().ready().await.ok()?;
        let (response, mut stream) = ready.send_request(request, false).ok()?;
        let _ = stream.send_data(body, true);
        let response = response.await.ok()?;
        if let Some(status) = response.headers().get("grpc-status") {
            return Some(status.to_str().unwrap().to_string());
        }
        let mut body = response.into_body();
        // Read at most a few messages: a valid request may start an
        // endless stream (a tail, a health watch).
        for _ in 0..4 {
            match body.data().await {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                }
                Some(Err(_)) => return None,
                None => break,
            }
        }
        let trailers = body.trailers().await.ok()??;
        Some(trailers.get("grpc-status")?.to_str().unwrap().to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()
        .flatten()
}

/// --idle-timeout: a connection without calls is closed after the timeout,
/// while a connection with a tail open stays (it gets the next line after
/// the idle one was closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let (root, _) = served();
    let log = root.path().join("app.log");
    std::fs::write(&log, b"one\n").unwrap();
    let server = in_process(root.path(), |config| {
        config.idle_timeout = Duration::from_millis(700)
    });
    let busy = connect(&server.url).await;
    let mut tail = busy
        .tail("app.log", TailStart::LastLines(0), true)
        .await
        .unwrap();
    tail.next().await.unwrap();

    let started = Instant::now();
    let (mut send, closed) = raw_h2(server.addr).await;
    let status = h2_call(&mut send, "/grpc.health.v1.Health/Check", grpc_frame(&[])).await;
    assert_eq!(status.as_deref(), Some("0"));
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the idle connection was never closed")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );

    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(b"two\n").unwrap();
    let event = tokio::time::timeout(WAIT, tail.next())
        .await
        .expect("the busy connection's tail went quiet")
        .unwrap();
    assert!(
        matches!(&event, Some(TailEvent::Data { data, .. }) if &data[..] == b"two\n"),
        "{event:?}"
    );
}

/// A gRPC length-prefixed message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = bytes::BytesMut::with_capacity(message.len() + 5);
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// --handshake-timeout: a connection that never sends a byte is closed
/// after the timeout, and while it hangs there others are served.
#[test]
fn silent_connections_time_out_without_blocking_others() {
    let (root, data) = served();
    let server = ServerProcess::start(root.path(), &["--handshake-timeout", "1"]);
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let cwd = tempfile::tempdir().unwrap();
    client(&server.url, cwd.path(), &["get", "blob.bin"]).expect_code(0);
    assert_eq!(std::fs::read(cwd.path().join("blob.bin")).unwrap(), data);
    for socket in &mut silent {
        assert_closed_by_server(socket);
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
}

/// Reads from `socket` until the server closes it (bounded).
fn assert_closed_by_server(socket: &mut TcpStream) {
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(err) => panic!("the server did not close the connection: {err}"),
        }
    }
}

/// A TLS server: a connection stuck before its handshake, one that sends
/// half a ClientHello, and 64 KiB of random bytes do not stop a normal get.
#[test]
fn tls_server_survives_stalled_and_garbage_handshakes() {
    let pki = Pki::new();
    let (root, data) = served();
    let server = pki.serve(root.path(), &["--handshake-timeout", "1"]);
    let _silent = TcpStream::connect(server.addr).unwrap();
    let mut half = TcpStream::connect(server.addr).unwrap();
    // A TLS record header announcing a 512-byte handshake, then 10 bytes.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .unwrap();
    let mut garbage = TcpStream::connect(server.addr).unwrap();
    let _ = garbage.write_all(&random_bytes(64 * 1024, 11));
    let cwd = tempfile::tempdir().unwrap();
    fetchd_in(
        cwd.path(),
        &[
            "--server",
            &https_url(&server, "localhost"),
            "--ca-cert",
            s(&pki.ca),
            "get",
            "blob.bin",
        ],
    )
    .expect_code(0);
    assert_eq!(std::fs::read(cwd.path().join("blob.bin")).unwrap(), data);
    assert_closed_by_server(&mut half);
    assert_closed_by_server(&mut garbage);
}

/// 64 KiB of random bytes to the port (several connections at once, and
/// after a valid HTTP/2 preface): each is closed, and a normal get works.
#[test]
fn random_bytes_to_the_port_then_a_normal_get() {
    let (root, data) = served();
    let server = ServerProcess::start(root.path(), &[]);
    let mut sockets = Vec::new();
    for seed in 0..4 {
        let mut socket = TcpStream::connect(server.addr).unwrap();
        if seed % 2 == 1 {
            socket
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .unwrap();
        }
        let _ = socket.write_all(&random_bytes(64 * 1024, 100 + seed));
        sockets.push(socket);
    }
    for socket in &mut sockets {
        assert_closed_by_server(socket);
    }
    let cwd = tempfile::tempdir().unwrap();
    client(&server.url, cwd.path(), &["get", "blob.bin"]).expect_code(0);
    assert_eq!(std::fs::read(cwd.path().join("blob.bin")).unwrap(), data);
    assert!(
        std::fs::read_dir(root.path()).unwrap().count() == 1,
        "the server wrote something under its root"
    );
}

/// A TCP proxy that can be frozen: it stops moving bytes either way but
/// keeps both sockets open, like a peer whose machine vanished.
struct Proxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    /// Gets a message when the server closes its side.
    server_closed: mpsc::Receiver<()>,
}

impl Proxy {
    fn start(server: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let (closed_tx, server_closed) = mpsc::channel();
        let is_frozen = Arc::clone(&frozen);
        thread::spawn(move || {
            let (downstream, _) = listener.accept().unwrap();
            let upstream = TcpStream::connect(server).unwrap();
            let pump = |mut from: TcpStream,
                        mut to: TcpStream,
                        frozen: Arc<AtomicBool>,
                        done: Option<mpsc::Sender<()>>| {
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if frozen.load(Ordering::SeqCst) {
                                    // Swallow: nothing gets through, nothing
                                    // is answered, nothing is closed.
                                    continue;
                                }
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                })
            };
            pump(
                downstream.try_clone().unwrap(),
                upstream.try_clone().unwrap(),
                Arc::clone(&is_frozen),
                None,
            );
            pump(upstream, downstream, is_frozen, Some(closed_tx));
        });
        Proxy {
            addr,
            frozen,
            server_closed,
        }
    }
}

/// HTTP/2 keepalive: a client that stops answering (its proxy freezes) is
/// dropped after the keepalive timeout, which frees its tail slot for
/// another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_frees_a_dead_clients_streams() {
    let (root, _) = served();
    std::fs::write(root.path().join("app.log"), b"one\n").unwrap();
    let server = in_process(root.path(), |config| {
        config.max_tails = 1;
        config.keepalive_interval = Duration::from_millis(300);
        config.keepalive_timeout = Duration::from_millis(300);
    });
    let proxy = Proxy::start(server.addr);
    let doomed = connect(&format!("http://{}", proxy.addr)).await;
    let mut tail = doomed
        .tail("app.log", TailStart::LastLines(0), true)
        .await
        .unwrap();
    tail.next().await.unwrap();
    let other = connect(&server.url).await;
    let err = match other.tail("app.log", TailStart::LastLines(0), true).await {
        Ok(mut stream) => stream.next().await.unwrap_err(),
        Err(err) => err,
    };
    assert_exhausted(err, "concurrent tails");

    proxy.frozen.store(true, Ordering::SeqCst);
    let closed = tokio::task::spawn_blocking(move || proxy.server_closed.recv_timeout(WAIT));
    closed
        .await
        .unwrap()
        .expect("the server never dropped the silent client");
    let deadline = Instant::now() + WAIT;
    loop {
        match other.tail("app.log", TailStart::LastLines(0), true).await {
            Ok(mut stream) => match stream.next().await {
                Ok(Some(_)) => break,
                Ok(None) => panic!("the tail ended at once"),
                Err(err) => assert_exhausted(err, "concurrent tails"),
            },
            Err(err) => assert_exhausted(err, "concurrent tails"),
        }
        assert!(
            Instant::now() < deadline,
            "the dead client's tail slot was never freed"
        );
        tokio::task::yield_now().await;
    }
    drop(tail);
}

// ---------------------------------------------------------------------
// Hostile request bodies
// ---------------------------------------------------------------------

/// Passes message bytes through untouched, to send what no client would.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Every method the server has, by path.
const METHODS: &[&str] = &[
    "/fetchd.v1.Fetchd/Stat",
    "/fetchd.v1.Fetchd/List",
    "/fetchd.v1.Fetchd/Read",
    "/fetchd.v1.Fetchd/Tail",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/fetchd.v1.Fetchd/NoSuchMethod",
];

/// Sends `message` as the one request message of `method` (as a client
/// stream, which every server-side method shape accepts) and returns how
/// the call ended: its status, `Ok` when it answered normally. Reads at
/// most a few answers (a valid request may start an endless stream).
async fn raw_call(
    channel: &tonic::transport::Channel,
    method: &str,
    message: Bytes,
    token: Option<&str>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let call = async {
        grpc.ready()
            .await
            .map_err(|err| tonic::Status::unknown(err.to_string()))?;
        let mut request = tonic::Request::new(tokio_stream::iter(vec![message]));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let path = http::uri::PathAndQuery::try_from(method).unwrap();
        let mut answers = grpc.streaming(request, path, RawCodec).await?.into_inner();
        for _ in 0..4 {
            if answers.message().await?.is_none() {
                break;
            }
        }
        Ok::<_, tonic::Status>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Ok(())) => tonic::Status::ok(""),
        Ok(Err(status)) => status,
        // Still streaming (a tail or watch that decoded as valid): fine.
        Err(_) => tonic::Status::deadline_exceeded("still streaming"),
    }
}

/// Set when a server thread of this test binary panics.
static PANICKED: AtomicBool = AtomicBool::new(false);

fn watch_for_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Test threads are named after their test and fail on their
            // own; server threads (tokio's workers and blocking pool, the
            // server's own threads) are not.
            let name = thread::current().name().map(str::to_string);
            if name
                .as_deref()
                .is_none_or(|name| name.starts_with("tokio-"))
            {
                PANICKED.store(true, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

mod decoding {
    use super::*;
    use proptest::prelude::*;

    /// One server and connection for all cases of the property tests.
    struct Fixture {
        runtime: tokio::runtime::Runtime,
        server: InProcessServer,
        channel: tonic::transport::Channel,
        _root: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        watch_for_panics();
        let (root, _) = served();
        std::fs::write(root.path().join("app.log"), b"line\n").unwrap();
        let server = in_process(root.path(), |config| {
            config.max_request_bytes = 64 * 1024;
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let channel = runtime.block_on(async {
            tonic::transport::Endpoint::from_shared(server.url.clone())
                .unwrap()
                .connect()
                .await
                .unwrap()
        });
        Fixture {
            runtime,
            server,
            channel,
            _root: root,
        }
    }

    /// The server still answers a normal call, and nothing panicked.
    fn assert_still_serving(fixture: &Fixture) {
        fixture.runtime.block_on(async {
            let client = connect(&fixture.server.url).await;
            let stat = client.stat("blob.bin", false).await.expect("still serving");
            assert_eq!(stat.entry.size, 100_000);
        });
        assert!(!PANICKED.load(Ordering::SeqCst), "something panicked");
    }

    /// Bytes that are mostly near-valid protobuf (field tags with random
    /// payloads) or plain noise.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            proptest::collection::vec(
                (0u8..16, proptest::collection::vec(any::<u8>(), 0..24)),
                0..12
            )
            .prop_map(|fields| {
                let mut out = Vec::new();
                for (tag, payload) in fields {
                    out.push((tag << 3) | (payload.len() as u8 % 6));
                    out.extend(payload);
                }
                out
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Random bytes as the (well-framed) request message of every
        /// method: the server answers each with a status, never panics,
        /// and keeps serving.
        #[test]
        fn random_messages_get_a_status(message in message(), which in 0..METHODS.len()) {
            let fixture = FIXTURE.get_or_init(fixture);
            let status = fixture.runtime.block_on(raw_call(
                &fixture.channel,
                METHODS[which],
                Bytes::from(message),
                None,
            ));
            // Any code is fine, as long as an answer came; a crashed
            // handler would show as a reset (Unknown "h2 protocol error")
            // or a dead connection.
            prop_assert!(
                !status.message().contains("h2 protocol error"),
                "{}: {status:?}", METHODS[which]
            );
            assert_still_serving(fixture);
        }

        /// Random bytes as the raw HTTP/2 request body (gRPC framing not
        /// respected: lengths up to 4 GiB, truncated messages): each call
        /// ends with a grpc-status or a reset, and the server keeps serving.
        #[test]
        fn random_bodies_get_an_answer(body in proptest::collection::vec(any::<u8>(), 0..2048), which in 0..METHODS.len()) {
            let fixture = FIXTURE.get_or_init(fixture);
            fixture.runtime.block_on(async {
                let (mut send, _closed) = raw_h2(fixture.server.addr).await;
                let _ = h2_call(&mut send, METHODS[which], Bytes::from(body)).await;
            });
            assert_still_serving(fixture);
        }
    }

    /// The one fixture of this module, made by the first test to need it.
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();

    /// A message header announcing more than --max-request-bytes is
    /// refused with RESOURCE_EXHAUSTED from its header alone.
    #[test]
    fn oversized_message_header_is_refused_early() {
        let fixture = FIXTURE.get_or_init(fixture);
        fixture.runtime.block_on(async {
            let (mut send, _closed) = raw_h2(fixture.server.addr).await;
            let mut body = bytes::BytesMut::new();
            body.put_u8(0);
            body.put_u32(u32::MAX);
            body.put_slice(&[0u8; 100]);
            let status = h2_call(&mut send, "/fetchd.v1.Fetchd/Stat", body.freeze()).await;
            assert_eq!(status.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
        });
        assert_still_serving(fixture);
    }
}

// ---------------------------------------------------------------------
// Least privilege
// ---------------------------------------------------------------------

/// `--root /` (also spelled another way) is refused with exit 2 and a
/// message naming --allow-root-slash; with that flag it starts.
#[test]
fn root_slash_needs_an_explicit_flag() {
    for root in ["/", "/tmp/.."] {
        let run = run(fetchd().args(["serve", "--listen", "127.0.0.1:0", "--root", root]));
        run.expect_code(2).expect_stderr("--allow-root-slash");
        assert!(
            !run.stdout_str().contains("listening"),
            "{}",
            run.describe()
        );
    }
    let mut server = ServerProcess::start(Path::new("/"), &["--allow-root-slash"]);
    server.kill();
}

/// Listening on a non-loopback address without TLS and tokens warns about
/// both on stderr; on loopback it does not.
#[test]
fn exposed_listener_warns() {
    let (root, _) = served();
    let mut child = fetchd()
        .args(["serve", "--listen", "0.0.0.0:0", "--root"])
        .arg(root.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !(seen
        .iter()
        .any(|line: &String| line.contains("without TLS"))
        && seen
            .iter()
            .any(|line| line.contains("without --token-file")))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no warnings; stderr:\n{}", seen.join("\n"));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    let loopback = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    client(&loopback.url, cwd.path(), &["stat", "blob.bin"]).expect_code(0);
    let logged = loopback.stderr_lines().join("\n");
    assert!(!logged.contains("without TLS"), "{logged}");
}

/// In-process TLS server config from files (the library path): loading
/// names the file at fault.
#[test]
fn server_tls_load_names_files() {
    let pki = Pki::new();
    ServerTls::load(&pki.server_cert, &pki.server_key, Some(&pki.ca)).unwrap();
    let err = ServerTls::load(&pki.server_key, &pki.server_key, None).unwrap_err();
    assert!(err.to_string().contains("server.key"), "{err}");
    assert!(err.to_string().contains("no certificate"), "{err}");
}
