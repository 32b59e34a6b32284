//! Security basics against real servers: Redis AUTH and TLS through `RedisConfig`, CQL TLS through
//! `CqlConfig`, and secrets never appearing in error messages.

use std::process::Command;
use std::time::{Duration, Instant};

use chatlog::{TempDir, TestRedis, free_port, unique};
use chatlog_store::security::TlsFiles;
use chatlog_store::{CqlConfig, RedisConfig, Secret};

async fn ping(config: &RedisConfig) -> Result<String, String> {
    let client = config.client().map_err(|e| e.to_string())?;
    let mut con = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "timeout".to_owned())?
    .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .map_err(|e| e.to_string())
}

/// Polls `ping` until it succeeds (the server is up) or 10 s pass.
async fn wait_ready(config: &RedisConfig) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ping(config).await {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("redis never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn redis_auth_is_used_and_the_password_never_shows_in_errors() {
    let port = free_port();
    let password = unique("pw-redis-auth");
    let _server = TestRedis::start(
        &[
            "--port".into(),
            port.to_string(),
            "--requirepass".into(),
            password.clone(),
        ],
        port,
    );
    let with_auth = RedisConfig {
        url: format!("redis://127.0.0.1:{port}/"),
        password: Secret::new(password.clone()),
        ..RedisConfig::default()
    };
    wait_ready(&with_auth).await;
    assert_eq!(ping(&with_auth).await.unwrap(), "PONG");

    let without = RedisConfig {
        password: Secret::default(),
        ..with_auth.clone()
    };
    let err = ping(&without).await.unwrap_err();
    assert!(
        err.contains("NOAUTH") || err.contains("Authentication"),
        "{err}"
    );

    let wrong = RedisConfig {
        password: Secret::new(format!("{password}-wrong")),
        ..with_auth.clone()
    };
    let err = ping(&wrong).await.unwrap_err();
    assert!(
        !err.contains(&password),
        "an error message shows the password: {err}"
    );
    assert!(!format!("{wrong:?}").contains(&password));
}

/// Makes a CA and a server certificate for 127.0.0.1 with the openssl CLI.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=chatlog-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
}

#[tokio::test]
async fn redis_tls_verifies_the_server_against_the_configured_ca() {
    let certs = TempDir::new("tls");
    make_certs(&certs.0);
    let port = free_port();
    let path = |f: &str| certs.0.join(f).display().to_string();
    let _server = TestRedis::start(
        &[
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
        port,
    );
    let tls = RedisConfig {
        url: format!("rediss://127.0.0.1:{port}/"),
        tls: Some(TlsFiles {
            ca_file: certs.0.join("ca.pem"),
            cert_file: None,
            key_file: None,
            verify_peer: true,
        }),
        ..RedisConfig::default()
    };
    wait_ready(&tls).await;
    assert_eq!(ping(&tls).await.unwrap(), "PONG");

    // Without our CA the server's certificate is untrusted: the client must refuse it.
    let system_trust = RedisConfig {
        tls: None,
        ..tls.clone()
    };
    assert!(
        ping(&system_trust).await.is_err(),
        "an untrusted certificate was accepted"
    );
    // And plaintext to the TLS port fails too.
    let plain = RedisConfig {
        url: format!("redis://127.0.0.1:{port}/"),
        tls: None,
        ..tls.clone()
    };
    assert!(ping(&plain).await.is_err());
}

#[tokio::test]
async fn cql_tls_settings_are_applied() {
    let certs = TempDir::new("cqltls");
    make_certs(&certs.0);
    // The local Cassandra speaks plaintext: a TLS session must fail its handshake, which proves the
    // TLS context is really used.
    let config = CqlConfig {
        connect_timeout: Duration::from_secs(3),
        tls: Some(TlsFiles {
            ca_file: certs.0.join("ca.pem"),
            cert_file: None,
            key_file: None,
            verify_peer: true,
        }),
        ..chatlog::cql_config("chatlog")
    };
    assert!(
        config.connect().await.is_err(),
        "TLS to a plaintext node must fail"
    );
    // Plaintext to the same node works (the failure above is TLS's).
    let plain = CqlConfig {
        tls: None,
        ..config.clone()
    };
    plain.connect().await.expect("plaintext CQL");
    // A missing CA file is a clear configuration error naming the file.
    let missing = CqlConfig {
        tls: Some(TlsFiles {
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: None,
            key_file: None,
            verify_peer: true,
        }),
        ..config
    };
    let err = missing.connect().await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

/// The stack's Cassandra checks logins (PasswordAuthenticator). A role's login connects and
/// queries; a wrong password and a missing login are refused with errors that say it is about
/// authentication and never show the password.
#[tokio::test]
async fn cql_logins_are_checked_and_the_password_never_shows_in_errors() {
    let admin = chatlog::cql_config("chatlog")
        .connect()
        .await
        .expect("the stack's login");
    let password = unique("pw-cql");
    let role = chatlog::create_cql_role(&admin, "cql_role", &password).await;
    let with_role = CqlConfig {
        username: role.clone(),
        password: Secret::new(password.clone()),
        connect_timeout: Duration::from_secs(5),
        ..chatlog::cql_config("chatlog")
    };
    let session = with_role.connect().await.expect("the role's login");
    session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .expect("a query as the role");

    let wrong = CqlConfig {
        password: Secret::new(format!("{password}-wrong")),
        ..with_role.clone()
    };
    let err = wrong.connect().await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("auth"), "{err}");
    assert!(
        !err.contains(&password),
        "an error shows the password: {err}"
    );
    assert!(!format!("{wrong:?}").contains(&password));

    let anonymous = CqlConfig {
        username: String::new(),
        password: Secret::default(),
        ..with_role
    };
    let err = anonymous.connect().await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("auth"), "{err}");

    chatlog::drop_cql_role(&admin, &role).await;
}
