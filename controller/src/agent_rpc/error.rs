//! `RpcError`: the errors of the node API and the one place they become
//! gRPC status codes (see the list in [`super`]).

use tonic::Status;

use crate::store::StoreError;
use crate::validation::FieldError;

/// Errors of the node API, translated to gRPC status codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// A request field is invalid.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Field path in the request message.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Wrong join token or node secret.
    #[error("{0}")]
    Unauthenticated(String),
    /// The request is authenticated but not allowed (a registration under
    /// an existing node without its secret, a revoked node, a per-node join
    /// token used for another name).
    #[error("{0}")]
    PermissionDenied(String),
    /// Unknown node id.
    #[error("{0}")]
    NotFound(String),
    /// The requested name belongs to another node.
    #[error("{0}")]
    AlreadyExists(String),
    /// The agent is older than this controller serves; nothing was stored.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The store failed; nothing was stored.
    #[error("{0}")]
    Unavailable(String),
}

impl From<FieldError> for RpcError {
    fn from(e: FieldError) -> Self {
        RpcError::InvalidArgument {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<StoreError> for RpcError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownNode(id) => RpcError::NotFound(format!(
                "node_id: the controller does not know node {id}; register again"
            )),
            StoreError::WrongSecret(id) => RpcError::Unauthenticated(format!(
                "node_secret: wrong secret for node {id}; register again"
            )),
            StoreError::Revoked(name) => RpcError::Unauthenticated(format!(
                "node_id: node {name} was revoked by an operator; it registers again only \
                 after an operator approves it (measurelab node approve {name})"
            )),
            StoreError::RegistrationRefused(message) => RpcError::PermissionDenied(message),
            e @ StoreError::JoinTokenRefused(_) => RpcError::Unauthenticated(e.to_string()),
            e @ StoreError::NameTaken { .. } => RpcError::AlreadyExists(format!("name: {e}")),
            StoreError::Invalid { field, reason } => RpcError::InvalidArgument { field, reason },
            StoreError::NotFound { kind, id } => {
                RpcError::NotFound(format!("the controller has no {kind} {id:?}"))
            }
            StoreError::Conflict { field, message } => RpcError::InvalidArgument {
                field: field.unwrap_or_else(|| "(request)".into()),
                reason: message,
            },
            other => RpcError::Unavailable(other.to_string()),
        }
    }
}

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Self {
        let message = e.to_string();
        match e {
            RpcError::InvalidArgument { .. } => Status::invalid_argument(message),
            RpcError::Unauthenticated(_) => Status::unauthenticated(message),
            RpcError::PermissionDenied(_) => Status::permission_denied(message),
            RpcError::NotFound(_) => Status::not_found(message),
            RpcError::AlreadyExists(_) => Status::already_exists(message),
            RpcError::FailedPrecondition(_) => Status::failed_precondition(message),
            RpcError::Unavailable(_) => Status::unavailable(message),
        }
    }
}
