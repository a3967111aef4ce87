//! Errors of the service, typed where they are made, and the one place
//! that turns them into SQLSTATEs: the SQL functions (through the command
//! queue, module `mgmt`) and the page service's error responses both take
//! the code from here, so a client can tell "no such timeline" from "the
//! primary is not suitable" from a broken disk without reading the text.

use serde::{Deserialize, Serialize};
use storage::repo::{RedoError, RepoError};

/// SQLSTATE codes the service uses (PostgreSQL's `errcodes.txt`).
pub mod sqlstate {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const INVALID_PARAMETER: &str = "22023";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const DEPENDENT_OBJECTS_STILL_EXIST: &str = "2BP01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const QUERY_CANCELED: &str = "57014";
    pub const SYSTEM_ERROR: &str = "58000";
    pub const IO_ERROR: &str = "58030";
    pub const DATA_CORRUPTED: &str = "XX001";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
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
    /// Other objects depend on it (a timeline with branches, a tenant with
    /// timelines).
    #[error("{0}")]
    HasDependents(String),
    /// The primary could not be reached or the connection broke.
    #[error("{0}")]
    Connection(String),
    /// Waiting for something (redo) took longer than its timeout.
    #[error("{0}")]
    Timeout(String),
    /// A part of the page server needed for the answer is not working (a
    /// redo worker died, no redo workers are configured).
    #[error("{0}")]
    Unavailable(String),
    /// Reading or writing the page server's own files failed.
    #[error("{0}")]
    Io(String),
    /// A file of the page server does not hold what it should.
    #[error("{0}")]
    Corrupt(String),
    /// Anything else: a bug or an unexpected failure (redo included).
    #[error("{0}")]
    Internal(String),
    /// A page-service client's credentials were refused (a missing,
    /// malformed, expired or wrongly signed token, or one with unusable
    /// claims): what PostgreSQL answers a wrong password with.
    #[error("{0}")]
    AuthenticationFailed(String),
    /// The page service cannot authenticate anyone (JWT authentication
    /// without a usable public key): no credentials would do.
    #[error("{0}")]
    AuthenticationUnavailable(String),
    /// An authenticated client asked for something its token does not
    /// grant (another tenant's data).
    #[error("{0}")]
    PermissionDenied(String),
}

impl ServiceError {
    /// The SQLSTATE a client sees for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ServiceError::NotFound(_) => sqlstate::UNDEFINED_OBJECT,
            ServiceError::AlreadyExists(_) => sqlstate::DUPLICATE_OBJECT,
            ServiceError::InvalidArgument(_) => sqlstate::INVALID_PARAMETER,
            ServiceError::NotInPrerequisiteState(_) => sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            ServiceError::HasDependents(_) => sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
            ServiceError::Connection(_) => sqlstate::CONNECTION_FAILURE,
            ServiceError::Timeout(_) => sqlstate::QUERY_CANCELED,
            ServiceError::Unavailable(_) => sqlstate::SYSTEM_ERROR,
            ServiceError::Io(_) => sqlstate::IO_ERROR,
            ServiceError::Corrupt(_) => sqlstate::DATA_CORRUPTED,
            ServiceError::Internal(_) => sqlstate::INTERNAL_ERROR,
            ServiceError::AuthenticationFailed(_) => sqlstate::INVALID_PASSWORD,
            ServiceError::AuthenticationUnavailable(_) => sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            ServiceError::PermissionDenied(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
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
            sqlstate::DEPENDENT_OBJECTS_STILL_EXIST => ServiceError::HasDependents(message),
            sqlstate::CONNECTION_FAILURE => ServiceError::Connection(message),
            sqlstate::QUERY_CANCELED => ServiceError::Timeout(message),
            sqlstate::SYSTEM_ERROR => ServiceError::Unavailable(message),
            sqlstate::IO_ERROR => ServiceError::Io(message),
            sqlstate::DATA_CORRUPTED => ServiceError::Corrupt(message),
            sqlstate::INVALID_PASSWORD => ServiceError::AuthenticationFailed(message),
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION => ServiceError::AuthenticationUnavailable(message),
            sqlstate::INSUFFICIENT_PRIVILEGE => ServiceError::PermissionDenied(message),
            _ => ServiceError::Internal(message),
        }
    }

    /// The same kind of error with `message` as its whole text.
    pub fn with_message(self, message: String) -> ServiceError {
        match self {
            ServiceError::NotFound(_) => ServiceError::NotFound(message),
            ServiceError::AlreadyExists(_) => ServiceError::AlreadyExists(message),
            ServiceError::InvalidArgument(_) => ServiceError::InvalidArgument(message),
            ServiceError::NotInPrerequisiteState(_) => ServiceError::NotInPrerequisiteState(message),
            ServiceError::HasDependents(_) => ServiceError::HasDependents(message),
            ServiceError::Connection(_) => ServiceError::Connection(message),
            ServiceError::Timeout(_) => ServiceError::Timeout(message),
            ServiceError::Unavailable(_) => ServiceError::Unavailable(message),
            ServiceError::Io(_) => ServiceError::Io(message),
            ServiceError::Corrupt(_) => ServiceError::Corrupt(message),
            ServiceError::Internal(_) => ServiceError::Internal(message),
            ServiceError::AuthenticationFailed(_) => ServiceError::AuthenticationFailed(message),
            ServiceError::AuthenticationUnavailable(_) => ServiceError::AuthenticationUnavailable(message),
            ServiceError::PermissionDenied(_) => ServiceError::PermissionDenied(message),
        }
    }

    /// The same kind of error with `context: ` in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> ServiceError {
        let message = format!("{context}: {self}");
        self.with_message(message)
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
            RepoError::Redo { error, .. } => ServiceError::from(error).with_message(message),
            _ => ServiceError::Internal(message),
        }
    }
}

impl From<RedoError> for ServiceError {
    /// Timeouts, dead workers, rejected records and failed redo each get a
    /// SQLSTATE of their own.
    fn from(e: RedoError) -> ServiceError {
        let message = e.to_string();
        match e {
            RedoError::Timeout(_) => ServiceError::Timeout(message),
            RedoError::WorkerDied { .. } | RedoError::Unavailable(_) => ServiceError::Unavailable(message),
            RedoError::Rejected(_) | RedoError::Invalid(_) => ServiceError::Corrupt(message),
            RedoError::Failed(_) => ServiceError::Internal(message),
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
            ServiceError::Timeout("a".into()),
            ServiceError::Unavailable("a".into()),
            ServiceError::Io("a".into()),
            ServiceError::Corrupt("a".into()),
            ServiceError::Internal("a".into()),
            ServiceError::AuthenticationFailed("a".into()),
            ServiceError::AuthenticationUnavailable("a".into()),
            ServiceError::PermissionDenied("a".into()),
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
    fn redo_failures_map_by_kind() {
        use std::time::Duration;
        use storage::repo::RedoFailure;
        let failure = |rejected| RedoFailure { lsn: 0x10, rmgr: 10, message: "bad".into(), rejected };
        let cases = [
            (RedoError::Timeout(Duration::from_secs(30)), sqlstate::QUERY_CANCELED),
            (RedoError::WorkerDied { worker: 1, reason: "exited".into() }, sqlstate::SYSTEM_ERROR),
            (RedoError::from(failure(true)), sqlstate::DATA_CORRUPTED),
            (RedoError::from(failure(false)), sqlstate::INTERNAL_ERROR),
        ];
        for (error, code) in cases {
            let repo = RepoError::Redo { key: storage::key::Key::MIN, lsn: Lsn(0x20), error: error.clone() };
            let service = ServiceError::from(repo);
            assert_eq!(service.sqlstate(), code, "{error:?}");
            assert!(service.to_string().starts_with("redo of "), "{service}");
        }
        assert!(RedoError::from(failure(true)).to_string().starts_with("record rejected before redo: redo of Heap record at 0/10"));
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
