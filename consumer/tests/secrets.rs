//! Secrets never appear in `--help`, in the printed configuration, or in the logs of a consumer that
//! runs with every kind of credential set (Redis AUTH against a password-protected Redis, a CQL
//! login checked by the stack's Cassandra, a Kafka SASL password). A password inside the Redis URL
//! and TLS/SASL settings in `kafka.properties` (which would bypass the `security` section) are
//! refused, and the refusals show no secret.

mod common;

use std::process::Command;
use std::time::Duration;

use chatlog::{TestRedis, free_port, unique};
use common::{Env, workload};

fn secrets() -> [String; 5] {
    [
        unique("cqlpw"),
        unique("redispw"),
        unique("saslpw"),
        unique("propsecret"),
        unique("urlpw"),
    ]
}

fn assert_clean(text: &str, secrets: &[String], what: &str) {
    for s in secrets {
        assert!(!text.contains(s.as_str()), "{what} shows a secret:\n{text}");
    }
}

#[test]
fn help_and_printed_config_never_show_secrets() {
    let secrets = secrets();
    let config = std::env::temp_dir().join(format!("{}.toml", unique("secrets_cfg")));
    std::fs::write(&config, "[kafka.properties]\n\"linger.ms\" = \"7\"\n").unwrap();
    let url_with_password = format!("redis://chatlog:{}@127.0.0.1:6390/", secrets[4]);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_chatlog-consumer"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("CHATLOG_CQL_PASSWORD", &secrets[0])
            .env("CHATLOG_REDIS_PASSWORD", &secrets[1])
            .env("CHATLOG_KAFKA_SASL_PASSWORD", &secrets[2])
            .env("CHATLOG_REDIS_URL", &url_with_password)
            .output()
            .unwrap();
        (
            out.status,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (status, help) = run(&["--help"]);
    assert!(status.success());
    assert!(
        help.contains("CHATLOG_CQL_PASSWORD") && help.contains("CHATLOG_REDIS_URL"),
        "the variables are documented:\n{help}"
    );
    assert_clean(&help, &secrets, "--help");

    // A SASL password without SASL is refused — and the refusal names no secret.
    let (status, refused) = run(&["config"]);
    assert!(
        !status.success(),
        "SASL password without SASL protocol must be refused"
    );
    assert_clean(&refused, &secrets, "the refusal");

    let config_command = |config: &std::path::Path, redis_url: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_chatlog-consumer"))
            .args(["config", "--config"])
            .arg(config)
            .env("CHATLOG_CQL_PASSWORD", &secrets[0])
            .env("CHATLOG_REDIS_PASSWORD", &secrets[1])
            .env("CHATLOG_REDIS_URL", redis_url)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, printed, _) = config_command(&config, "redis://chatlog@127.0.0.1:6390/");
    assert!(status.success(), "{printed}");
    assert!(
        printed.contains("linger.ms")
            && printed.contains("***")
            && printed.contains("redis://chatlog@127.0.0.1:6390/"),
        "{printed}"
    );
    assert_clean(&printed, &secrets, "the printed configuration");

    // A password inside the Redis URL is refused before anything prints the configuration, and
    // the refusal shows the URL masked.
    let (status, printed, log) = config_command(&config, &url_with_password);
    assert!(
        !status.success(),
        "a password in the Redis URL must be refused:\n{printed}"
    );
    assert!(
        log.contains("redis.password") && log.contains("redis://chatlog:***@127.0.0.1:6390/"),
        "the refusal says where the password belongs:\n{log}"
    );
    assert_clean(&format!("{printed}{log}"), &secrets, "the refusal");

    // TLS/SASL settings in kafka.properties would bypass [kafka.security]: refused, naming the
    // key and the section, never the value.
    for key in ["ssl.key.password", "security.protocol", "sasl.password"] {
        let refused_config = std::env::temp_dir().join(format!("{}.toml", unique("secrets_props")));
        std::fs::write(
            &refused_config,
            format!("[kafka.properties]\n\"{key}\" = \"{}\"\n", secrets[3]),
        )
        .unwrap();
        let (status, printed, log) = config_command(&refused_config, "redis://127.0.0.1:6390/");
        assert!(
            !status.success(),
            "{key} in kafka.properties must be refused:\n{printed}"
        );
        assert!(
            log.contains(key) && log.contains("`security` section"),
            "the refusal names {key} and the security section:\n{log}"
        );
        assert_clean(&format!("{printed}{log}"), &secrets, "the refusal");
        let _ = std::fs::remove_file(&refused_config);
    }
}

/// The consumer runs with real logins everywhere: Kafka through the stack's SASL/PLAIN listener
/// (transactions, offsets and the DLQ producer all log in), Cassandra as a role of the test's own,
/// Redis with AUTH. It persists the messages, and none of the passwords reaches its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_running_consumer_never_show_secrets() {
    let sasl = chatlog::kafka_sasl();
    let mut secrets = secrets().to_vec();
    // The listener's password is fixed by the stack; it stands in for the SASL secret here.
    secrets[2] = sasl.password.expose().to_owned();
    let env = Env::new("secrets", 1, 10).await;
    let port = free_port();
    let _redis = TestRedis::start(
        &[
            "--port".into(),
            port.to_string(),
            "--requirepass".into(),
            secrets[1].clone(),
        ],
        port,
    );
    let (sessions, _, messages) = workload("sec", 3, 5);
    env.produce(&messages).await;

    let config = std::env::temp_dir().join(format!("{}.toml", unique("secrets_run")));
    std::fs::write(
        &config,
        format!(
            "[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\n\
             sasl_username = {:?}\n",
            sasl.username
        ),
    )
    .unwrap();
    let redis_url = format!("redis://127.0.0.1:{port}/");
    // Both servers check the passwords: Redis AUTH, and the stack's Cassandra the login of a role
    // of this test's own that carries the secret password.
    let role = chatlog::create_cql_role(&env.session, "secrets_role", &secrets[0]).await;
    let consumer = env.spawn_consumer_with_env(
        &unique("secrets_txn"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--redis-url",
            &redis_url,
            "--bootstrap-servers",
            &sasl.bootstrap,
            "--log-format",
            "json",
        ],
        &[
            ("CHATLOG_CQL_USERNAME", role.as_str()),
            ("CHATLOG_CQL_PASSWORD", secrets[0].as_str()),
            ("CHATLOG_REDIS_PASSWORD", secrets[1].as_str()),
            ("CHATLOG_KAFKA_SASL_PASSWORD", secrets[2].as_str()),
            ("CHATLOG_LOG", "debug"),
        ],
    );
    env.wait_for_rows(&sessions, 5, 15, Duration::from_secs(60), &[&consumer])
        .await;
    consumer.terminate();
    assert!(
        consumer
            .wait_exit(Duration::from_secs(30))
            .unwrap()
            .success()
    );
    let log = consumer.log_text();
    assert!(log.contains("consuming"), "the consumer ran:\n{log}");
    assert_clean(&log, &secrets, "the consumer's log");
    // JSON mode prints only JSON: every line parses, the listening address included.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    assert!(
        consumer.http_addr().is_ok(),
        "the address is read from JSON too"
    );
    chatlog::drop_cql_role(&env.session, &role).await;
}
