//! Finding the other services of the mesh.
//!
//! Each running service reports its addresses in `<data-dir>/run/<name>.json`
//! (local mode, written by `trustmesh serve`); `TRUSTMESH_<NAME>_ADDR`
//! (e.g. `TRUSTMESH_AUTH_ADDR=auth.trustmesh.svc:7400` on Kubernetes)
//! overrides it. Addresses are resolved at every (re)connection, so a
//! restarted service on a new port is found again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// What a running service reports about itself in `<data-dir>/run/<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    /// The service name.
    pub service: String,
    /// Its process id.
    pub pid: u32,
    /// The SPIFFE ID it serves with.
    pub spiffe_id: String,
    /// mTLS gRPC address.
    pub grpc: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// HTTPS address (gateway only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub https: Option<SocketAddr>,
}

impl RunReport {
    /// Where the report of `service` lives under `data_dir`.
    pub fn path(data_dir: &Path, service: &str) -> PathBuf {
        data_dir.join("run").join(format!("{service}.json"))
    }

    /// Reads the report of `service`, if it is running.
    pub fn read(data_dir: &Path, service: &str) -> Option<RunReport> {
        let bytes = std::fs::read(Self::path(data_dir, service)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes this report atomically (temporary file, then rename).
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(data_dir, &self.service);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &path)
    }
}

/// Resolves service names to gRPC addresses.
#[derive(Debug, Clone)]
pub struct Directory {
    data_dir: PathBuf,
}

impl Directory {
    /// A directory reading run reports under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
        }
    }

    /// The gRPC address (`host:port`) of `service`.
    pub fn resolve(&self, service: &str) -> Result<String, RuntimeError> {
        let variable = format!("TRUSTMESH_{}_ADDR", service.to_ascii_uppercase());
        if let Ok(addr) = std::env::var(&variable)
            && !addr.is_empty()
        {
            return Ok(addr);
        }
        RunReport::read(&self.data_dir, service)
            .map(|report| report.grpc.to_string())
            .ok_or_else(|| RuntimeError::Connect {
                addr: service.to_owned(),
                reason: format!(
                    "the {service} service is not running (no {} and {variable} unset)",
                    RunReport::path(&self.data_dir, service).display()
                ),
            })
    }
}
