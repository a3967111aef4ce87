//! Errors of the service, typed where they are made, and the one place
//! that turns them into SQLSTATEs: the SQL functions (through the command
//! queue, module `mgmt`) and the page service's error responses both take
//! the code from here, so a client can tell "no such timeline" from "the
//! primary is not suitable" from a broken disk without reading the text.

use serde::{Deserialize, Serialize};
use storage::repo::RepoError;

/// SQLSTATE codes the service uses (PostgreSQL's `errcodes.txt`).
pub mod sqlstate {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const INVALID_PARAMETER: &str = "22023";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const IO_ERROR: &str = "58030";
    pub const DATA_CORRUPTED: &str = "XX001";
    pub const INTERNAL_ERROR: &str = "XX000";
}

/// What went wrong in a management command or a page-service request.
/// The text is the whole message; the variant says which SQLSTATE it gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ServiceError {
    /// A tenant, timeline or relation that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A tenant, timeline or replication slot that exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A malformed or out-of-range argument (an id, a slot name, an LSN).
    #[error("{0}")]
    InvalidArgument(String),
    /// The primary or the timeline is not in a state that allows it (a
    /// setting that differs from the host's, a slot that does not reach back
    /// far enough, an LSN not yet ingested).
    #[error("{0}")]
    NotInPrerequisiteState(String),
    /// The primary could not be reached or the connection broke.
    #[error("{0}")]
    Connection(String),
    /// Reading or writing the page server's own files failed.
    #[error("{0}")]
    Io(String),
    /// A file of the page server does not hold what it should.
    #[error("{0}")]
    Corrupt(String),
    /// Anything else: a bug or an unexpected failure (redo included).
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// The SQLSTATE a client sees for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ServiceError::NotFound(_) => sqlstate::UNDEFINED_OBJECT,
            ServiceError::AlreadyExists(_) => sqlstate::DUPLICATE_OBJECT,
            ServiceError::InvalidArgument(_) => sqlstate::INVALID_PARAMETER,
            ServiceError::NotInPrerequisiteState(_) => sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            ServiceError::Connection(_) => sqlstate::CONNECTION_FAILURE,
            ServiceError::Io(_) => sqlstate::IO_ERROR,
            ServiceError::Corrupt(_) => sqlstate::DATA_CORRUPTED,
            ServiceError::Internal(_) => sqlstate::INTERNAL_ERROR,
        }
    }

    /// The error a reply with this SQLSTATE stands for (the inverse of
    /// [`sqlstate`](Self::sqlstate); an unknown code is internal).
    pub fn from_sqlstate(code: &str, message: String) -> ServiceError {
        match code {
            sqlstate::UNDEFINED_OBJECT => ServiceError::NotFound(message),
            sqlstate::DUPLICATE_OBJECT => ServiceError::AlreadyExists(message),
            sqlstate::INVALID_PARAMETER => ServiceError::InvalidArgument(message),
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE => ServiceError::NotInPrerequisiteState(message),
            sqlstate::CONNECTION_FAILURE => ServiceError::Connection(message),
            sqlstate::IO_ERROR => ServiceError::Io(message),
            sqlstate::DATA_CORRUPTED => ServiceError::Corrupt(message),
            _ => ServiceError::Internal(message),
        }
    }

    /// The same kind of error with `context: ` in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> ServiceError {
        let prefix = |m: String| format!("{context}: {m}");
        match self {
            ServiceError::NotFound(m) => ServiceError::NotFound(prefix(m)),
            ServiceError::AlreadyExists(m) => ServiceError::AlreadyExists(prefix(m)),
            ServiceError::InvalidArgument(m) => ServiceError::InvalidArgument(prefix(m)),
            ServiceError::NotInPrerequisiteState(m) => ServiceError::NotInPrerequisiteState(prefix(m)),
            ServiceError::Connection(m) => ServiceError::Connection(prefix(m)),
            ServiceError::Io(m) => ServiceError::Io(prefix(m)),
            ServiceError::Corrupt(m) => ServiceError::Corrupt(prefix(m)),
            ServiceError::Internal(m) => ServiceError::Internal(prefix(m)),
        }
    }
}

impl From<RepoError> for ServiceError {
    fn from(e: RepoError) -> ServiceError {
        let message = e.to_string();
        match e {
            RepoError::TimelineNotFound(_) => ServiceError::NotFound(message),
            RepoError::TimelineExists(_) => ServiceError::AlreadyExists(message),
            RepoError::Invalid(_) | RepoError::TooOld { .. } => ServiceError::InvalidArgument(message),
            RepoError::WaitTimeout { .. } | RepoError::SwapRefused(_) => ServiceError::NotInPrerequisiteState(message),
            RepoError::Io { .. } => ServiceError::Io(message),
            RepoError::Corrupt { .. } => ServiceError::Corrupt(message),
            _ => ServiceError::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::lsn::Lsn;
    use storage::repo::TimelineId;

    #[test]
    fn every_kind_has_its_own_sqlstate_and_keeps_its_kind_under_context() {
        let all = [
            ServiceError::NotFound("a".into()),
            ServiceError::AlreadyExists("a".into()),
            ServiceError::InvalidArgument("a".into()),
            ServiceError::NotInPrerequisiteState("a".into()),
            ServiceError::Connection("a".into()),
            ServiceError::Io("a".into()),
            ServiceError::Corrupt("a".into()),
            ServiceError::Internal("a".into()),
        ];
        let codes: std::collections::BTreeSet<_> = all.iter().map(|e| e.sqlstate()).collect();
        assert_eq!(codes.len(), all.len());
        for e in all {
            assert_eq!(ServiceError::from_sqlstate(e.sqlstate(), "a".into()), e);
            let with = e.clone().context("tenant x");
            assert_eq!(with.sqlstate(), e.sqlstate());
            assert_eq!(with.to_string(), "tenant x: a");
        }
    }

    #[test]
    fn repository_errors_map_by_kind() {
        let id = TimelineId(7);
        assert_eq!(ServiceError::from(RepoError::TimelineNotFound(id)).sqlstate(), sqlstate::UNDEFINED_OBJECT);
        assert_eq!(ServiceError::from(RepoError::TimelineExists(id)).sqlstate(), sqlstate::DUPLICATE_OBJECT);
        let timeout = RepoError::WaitTimeout { timeline: id, lsn: Lsn(2), last_record_lsn: Lsn(1) };
        assert_eq!(ServiceError::from(timeout).sqlstate(), sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE);
        let message = RepoError::Invalid("bad LSN".into()).to_string();
        assert_eq!(ServiceError::from(RepoError::Invalid("bad LSN".into())), ServiceError::InvalidArgument(message));
    }
}
