//! Security basics against real servers: Redis AUTH and TLS through `RedisConfig`, CQL TLS through
//! `CqlConfig`, and secrets never appearing in error messages; the compose file's hardening
//! (ports on 127.0.0.1 only, passwords from the environment, no anonymous admin, no lifecycle API).

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

#[tokio::test]
async fn redis_tls_verifies_the_server_against_the_configured_ca() {
    let certs = TempDir::new("tls");
    chatlog::make_certs(&certs.0);
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
    chatlog::make_certs(&certs.0);
    // This test's own CA did not sign the stack's certificate (and a stack started without TLS
    // speaks plaintext only): the TLS session must fail its handshake, which proves the TLS
    // context is really used and verifies the server.
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

    chatlog::assert_wrong_cql_password_refused(&with_role, &[&password]).await;

    let anonymous = CqlConfig {
        username: String::new(),
        password: Secret::default(),
        ..with_role
    };
    let err = anonymous.connect().await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("auth"), "{err}");

    chatlog::drop_cql_role(&admin, &role).await;
}

// ------------------------------------------------------------------------------- compose

/// What the compose file says about its exposure, as `kind<TAB>service<TAB>value` lines, read
/// from the file itself with PyYAML (the YAML library docker-compose is built on).
fn compose_facts() -> Vec<(String, String, String)> {
    const SCRIPT: &str = r#"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for name, svc in doc["services"].items():
    for p in svc.get("ports", []) or []:
        if isinstance(p, dict):
            p = "%s:%s:%s" % (p.get("host_ip", ""), p.get("published", ""), p.get("target", ""))
        print("port\t%s\t%s" % (name, p))
    cmd = svc.get("command", [])
    if isinstance(cmd, str):
        cmd = [cmd]
    print("command\t%s\t%s" % (name, " ".join(str(c) for c in cmd).replace("\n", " ")))
    env = svc.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    for k, v in env.items():
        print("env\t%s\t%s=%s" % (name, k, v))
    print("image\t%s\t%s" % (name, svc.get("image", "")))
"#;
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&file)
        .output()
        .expect("python3 with PyYAML (dev/stack.sh up tools installs both)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '\t');
            Some((
                parts.next()?.to_owned(),
                parts.next()?.to_owned(),
                parts.next()?.to_owned(),
            ))
        })
        .collect()
}

/// Every published port of docker-compose.yml is bound to 127.0.0.1; Grafana has no anonymous
/// access and takes its admin password from the environment; Prometheus has no lifecycle API;
/// ScyllaDB checks logins and Redis requires AUTH, and the consumers get both credentials through
/// the environment. Each password is required: `docker-compose config` refuses the file without
/// it, naming the variable.
#[test]
fn compose_publishes_on_localhost_only_and_takes_passwords_from_the_environment() {
    let facts = compose_facts();
    let of = |kind: &str, service: &str| -> Vec<String> {
        facts
            .iter()
            .filter(|(k, s, _)| k == kind && s == service)
            .map(|(_, _, v)| v.clone())
            .collect()
    };
    // `service` sets `var` from the required environment variable `source` (`${SOURCE:?…}`).
    let required = |service: &str, var: &str, source: &str| {
        let env = of("env", service);
        let want = format!("{var}=${{{source}:?");
        assert!(
            env.iter().any(|e| e.starts_with(&want)),
            "{service}: {var} comes from the environment, required ({want}…): {env:?}"
        );
    };
    let ports: Vec<_> = facts.iter().filter(|(k, _, _)| k == "port").collect();
    assert!(ports.len() >= 5, "the published ports: {ports:?}");
    for (_, service, spec) in &ports {
        assert!(
            spec.starts_with("127.0.0.1:"),
            "{service} publishes {spec} on every interface: bind it to 127.0.0.1"
        );
    }

    let grafana = of("env", "grafana");
    assert!(
        grafana.contains(&"GF_AUTH_ANONYMOUS_ENABLED=false".to_owned()),
        "{grafana:?}"
    );
    required(
        "grafana",
        "GF_SECURITY_ADMIN_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
    );
    let prometheus = of("command", "prometheus").join(" ");
    assert!(prometheus.contains("--config.file"), "{prometheus}");
    assert!(!prometheus.contains("lifecycle"), "{prometheus}");
    let scylla = of("command", "scylla").join(" ");
    assert!(
        scylla.contains("--authenticator PasswordAuthenticator"),
        "{scylla}"
    );
    let redis = of("command", "redis").join(" ");
    assert!(redis.contains("requirepass"), "{redis}");
    required("redis", "REDIS_PASSWORD", "REDIS_PASSWORD");
    let consumers: Vec<&String> = facts
        .iter()
        .filter(|(k, _, v)| k == "image" && v.starts_with("chatlog-consumer"))
        .map(|(_, s, _)| s)
        .collect();
    assert!(consumers.len() >= 3, "consumers and migrate: {consumers:?}");
    for service in consumers {
        required(service, "CHATLOG_CQL_PASSWORD", "SCYLLA_PASSWORD");
        if service != "migrate" {
            required(service, "CHATLOG_REDIS_PASSWORD", "REDIS_PASSWORD");
        }
    }

    // docker-compose (v1, installed by dev/stack.sh up tools) resolves the file with every
    // password set, and refuses it without any one of them.
    let passwords = [
        "GRAFANA_ADMIN_PASSWORD",
        "SCYLLA_PASSWORD",
        "REDIS_PASSWORD",
    ];
    let config = |unset: Option<&str>| {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        for p in passwords {
            if Some(p) == unset {
                cmd.env_remove(p);
            } else {
                cmd.env(p, unique("pw"));
            }
        }
        cmd.output()
            .expect("docker-compose (Debian package docker-compose; dev/stack.sh up tools)")
    };
    let all = config(None);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    for p in passwords {
        let out = config(Some(p));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "without {p} compose must refuse");
        assert!(
            err.contains(&format!("set {p}")),
            "the refusal names {p}: {err}"
        );
    }
}
