//! TLS files of the CQL and Redis clients. Kafka's TLS/SASL settings live in `chatlog-kafka`.
//!
//! Files are paths, never inline keys.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// TLS files of a client connection (CQL or Redis).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file of the CA(s) that signed the server certificates.
    pub ca_file: PathBuf,
    /// PEM client certificate, for servers that require client authentication.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Verify the server's certificate and host name (turn off only in tests).
    #[serde(default = "yes")]
    pub verify_peer: bool,
}

fn yes() -> bool {
    true
}

/// The contents of [`TlsFiles`].
#[derive(Clone)]
pub struct TlsPem {
    /// The CA certificate(s), PEM.
    pub ca: Vec<u8>,
    /// The client certificate and its key, PEM, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads the files.
    pub fn read(&self) -> Result<TlsPem> {
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| Error::Config(format!("cannot read TLS file {}: {e}", p.display())))
        };
        let ca = read(&self.ca_file)?;
        let client = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "TLS cert_file and key_file must be given together".into(),
                ));
            }
        };
        Ok(TlsPem { ca, client })
    }
}
