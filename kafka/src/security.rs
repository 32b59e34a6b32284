//! Kafka TLS and SASL settings, and a map of extra client properties whose secret-looking values
//! never print and which may not override the typed settings.
//!
//! Secrets are [`Secret`]s (never in `Debug`, `Display` or logs); files are paths, never inline keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chatlog_store::Secret;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a Kafka client authenticates and encrypts.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaProtocol {
    /// No TLS, no SASL (local development only).
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS (credentials in clear: avoid).
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

/// Kafka TLS and SASL settings, mapped onto librdkafka properties by [`KafkaSecurity::properties`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: KafkaProtocol,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (GSSAPI is not built in).
    pub sasl_mechanism: Option<String>,
    /// SASL username.
    pub sasl_username: Option<String>,
    /// SASL password.
    pub sasl_password: Secret,
    /// PEM file of the CA that signed the brokers' certificates.
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    pub ssl_certificate_location: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub ssl_key_location: Option<PathBuf>,
    /// Password of the private key.
    pub ssl_key_password: Secret,
    /// Skip checking the broker's host name against its certificate (tests only).
    pub ssl_skip_hostname_verification: bool,
}

impl KafkaSecurity {
    /// The librdkafka properties of these settings.
    pub fn properties(&self) -> Result<Vec<(&'static str, String)>> {
        use KafkaProtocol::*;
        let mut p = vec![(
            "security.protocol",
            match self.protocol {
                Plaintext => "plaintext",
                Ssl => "ssl",
                SaslPlaintext => "sasl_plaintext",
                SaslSsl => "sasl_ssl",
            }
            .to_owned(),
        )];
        let tls = matches!(self.protocol, Ssl | SaslSsl);
        let sasl = matches!(self.protocol, SaslPlaintext | SaslSsl);
        if sasl {
            let mechanism = self.sasl_mechanism.as_deref().unwrap_or("SCRAM-SHA-512");
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism) {
                return Err(Error::Config(format!(
                    "kafka sasl_mechanism {mechanism:?} is not supported (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
                )));
            }
            let user = self.sasl_username.as_deref().unwrap_or_default();
            if user.is_empty() || self.sasl_password.expose().is_empty() {
                return Err(Error::Config(
                    "kafka SASL needs sasl_username and sasl_password".into(),
                ));
            }
            p.push(("sasl.mechanism", mechanism.to_owned()));
            p.push(("sasl.username", user.to_owned()));
            p.push(("sasl.password", self.sasl_password.expose().to_owned()));
        } else if self.sasl_username.is_some() || !self.sasl_password.expose().is_empty() {
            return Err(Error::Config(
                "kafka SASL credentials are set but protocol is not sasl_*".into(),
            ));
        }
        let files = [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                if !tls {
                    return Err(Error::Config(format!(
                        "kafka {key} is set but protocol is not ssl or sasl_ssl"
                    )));
                }
                p.push((key, path.display().to_string()));
            }
        }
        if tls {
            if !self.ssl_key_password.expose().is_empty() {
                p.push((
                    "ssl.key.password",
                    self.ssl_key_password.expose().to_owned(),
                ));
            }
            let verify = if self.ssl_skip_hostname_verification {
                "none"
            } else {
                "https"
            };
            p.push(("ssl.endpoint.identification.algorithm", verify.to_owned()));
        }
        Ok(p)
    }
}

/// Extra client properties (e.g. librdkafka settings). Values whose key looks secret (`password`,
/// `secret`, `token`, `key`, `jaas`, `pem`) print as `***`.
///
/// A config file may not set TLS or SASL here (`security.*`, `ssl.*`, `sasl.*`, and
/// `enable.ssl.*`/`enable.sasl.*` switches): they would silently override — or downgrade — what the
/// typed `security` section set, e.g. `security.protocol = "plaintext"` or
/// `enable.ssl.certificate.verification = "false"`. Deserializing refuses them, naming the key
/// (never its value).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        if let Some(key) = map.keys().find(|k| Properties::is_security(k)) {
            return Err(serde::de::Error::custom(format!(
                "property {key:?} may not be set here: TLS and SASL settings (security.*, ssl.*, \
                 sasl.*) belong in the `security` section (e.g. [kafka.security] protocol, \
                 ssl_ca_location, sasl_password), which checks them"
            )));
        }
        Ok(Properties(map))
    }
}

/// Serializes with the values of sensitive keys ([`Properties::is_sensitive`]) as `***`.
impl Serialize for Properties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            let v = if Properties::is_sensitive(k) {
                "***"
            } else {
                v
            };
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Properties {
    /// Whether a property is a TLS or SASL setting, which only the `security` section may set:
    /// any `.`- or `_`-separated part of the key is `security`, `ssl` or `sasl`.
    pub fn is_security(key: &str) -> bool {
        key.to_ascii_lowercase()
            .split(['.', '_'])
            .any(|part| matches!(part, "security" | "ssl" | "sasl"))
    }

    /// Whether a property's value must never be printed.
    pub fn is_sensitive(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "token",
            "key",
            "jaas",
            "pem",
            "credential",
        ]
        .iter()
        .any(|w| k.contains(w))
    }

    /// The properties, secrets included: hand them to the client library only.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if Properties::is_sensitive(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(props: &[(&'static str, String)]) -> BTreeMap<&'static str, String> {
        props.iter().cloned().collect()
    }

    #[test]
    fn plaintext_maps_to_plaintext_only() {
        let p = map(&KafkaSecurity::default().properties().unwrap());
        assert_eq!(p.len(), 1);
        assert_eq!(p["security.protocol"], "plaintext");
    }

    #[test]
    fn sasl_ssl_maps_every_setting() {
        let s = KafkaSecurity {
            protocol: KafkaProtocol::SaslSsl,
            sasl_mechanism: Some("SCRAM-SHA-256".into()),
            sasl_username: Some("chatlog".into()),
            sasl_password: Secret::new("s3cret"),
            ssl_ca_location: Some("/etc/ca.pem".into()),
            ssl_certificate_location: Some("/etc/client.pem".into()),
            ssl_key_location: Some("/etc/client.key".into()),
            ssl_key_password: Secret::new("k3y"),
            ssl_skip_hostname_verification: false,
        };
        let p = map(&s.properties().unwrap());
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-256");
        assert_eq!(p["sasl.username"], "chatlog");
        assert_eq!(p["sasl.password"], "s3cret");
        assert_eq!(p["ssl.ca.location"], "/etc/ca.pem");
        assert_eq!(p["ssl.certificate.location"], "/etc/client.pem");
        assert_eq!(p["ssl.key.location"], "/etc/client.key");
        assert_eq!(p["ssl.key.password"], "k3y");
        assert_eq!(p["ssl.endpoint.identification.algorithm"], "https");
        assert!(!format!("{s:?}").contains("s3cret") && !format!("{s:?}").contains("k3y"));
    }

    #[test]
    fn inconsistent_settings_are_errors() {
        let sasl_without_user = KafkaSecurity {
            protocol: KafkaProtocol::SaslSsl,
            ..KafkaSecurity::default()
        };
        assert!(sasl_without_user.properties().is_err());
        let creds_without_sasl = KafkaSecurity {
            sasl_username: Some("u".into()),
            ..KafkaSecurity::default()
        };
        assert!(creds_without_sasl.properties().is_err());
        let ca_without_tls = KafkaSecurity {
            ssl_ca_location: Some("/ca".into()),
            ..KafkaSecurity::default()
        };
        assert!(ca_without_tls.properties().is_err());
        let gssapi = KafkaSecurity {
            protocol: KafkaProtocol::SaslPlaintext,
            sasl_mechanism: Some("GSSAPI".into()),
            sasl_username: Some("u".into()),
            sasl_password: Secret::new("p"),
            ..KafkaSecurity::default()
        };
        assert!(gssapi.properties().is_err());
    }

    fn parse(pairs: &[(&str, &str)]) -> std::result::Result<Properties, String> {
        use serde::de::value::{Error as ValueError, MapDeserializer};
        let d = MapDeserializer::<_, ValueError>::new(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Properties::deserialize(d).map_err(|e| e.to_string())
    }

    #[test]
    fn properties_may_not_override_security_settings() {
        for key in [
            "security.protocol",
            "ssl.endpoint.identification.algorithm",
            "SSL.CA.Location",
            "sasl.password",
            "sasl.mechanisms",
            "enable.ssl.certificate.verification",
            "enable.sasl.oauthbearer.unsecure.jwt",
        ] {
            let err = parse(&[("linger.ms", "5"), (key, "hunter2")]).unwrap_err();
            assert!(err.contains(key), "the error names {key}: {err}");
            assert!(err.contains("`security` section"), "{err}");
            assert!(!err.contains("hunter2"), "the error shows the value: {err}");
        }
        let ok = parse(&[
            ("linger.ms", "5"),
            ("client.id", "c"),
            ("socket.keepalive.enable", "true"),
        ])
        .unwrap();
        assert_eq!(ok.0.len(), 3);
    }

    #[test]
    fn secret_looking_properties_never_print() {
        let mut m = BTreeMap::new();
        m.insert("sasl.password".to_owned(), "hunter2".to_owned());
        m.insert("ssl.key.pem".to_owned(), "-----BEGIN".to_owned());
        m.insert("linger.ms".to_owned(), "5".to_owned());
        let shown = format!("{:?}", Properties(m));
        assert!(
            !shown.contains("hunter2") && !shown.contains("BEGIN"),
            "{shown}"
        );
        assert!(shown.contains("\"linger.ms\": \"5\""), "{shown}");
    }
}
