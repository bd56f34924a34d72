//! Why a command was refused. Every variant maps to a stable API `code`.

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("{kind} {id:?} does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The object is in a state that does not allow this (e.g. approving a revoked subscription).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A regulation rule refused it (notice period, overlap, clearance).
    #[error("{message}")]
    Rule { code: &'static str, message: String },
}

impl RegistryError {
    /// Stable machine-readable code for API clients.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::NotFound { .. } => "NOT_FOUND",
            RegistryError::AlreadyExists { .. } => "ALREADY_EXISTS",
            RegistryError::Invalid { .. } => "INVALID_INPUT",
            RegistryError::Conflict { code, .. } | RegistryError::Rule { code, .. } => code,
        }
    }

    pub(crate) fn not_found(kind: &'static str, id: &str) -> Self {
        RegistryError::NotFound { kind, id: id.to_owned() }
    }
    pub(crate) fn exists(kind: &'static str, id: &str) -> Self {
        RegistryError::AlreadyExists { kind, id: id.to_owned() }
    }
    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        RegistryError::Invalid { field: field.to_owned(), reason: reason.into() }
    }
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        RegistryError::Conflict { code, message: message.into() }
    }
    pub(crate) fn rule(code: &'static str, message: impl Into<String>) -> Self {
        RegistryError::Rule { code, message: message.into() }
    }
}
