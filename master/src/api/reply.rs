//! Turning registry answers into JSON replies with the right status.

use http::StatusCode;
use serde::Serialize;
use shadow_common::error::{ErrorBody, FieldError};
use warp::Reply;

use crate::{registry::RegistryError, store::StoreError};

pub fn json<T: Serialize>(status: StatusCode, body: &T) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

pub fn error_reply(status: StatusCode, body: ErrorBody) -> warp::reply::Response {
    json(status, &body)
}

pub fn invalid(e: FieldError) -> warp::reply::Response {
    error_reply(StatusCode::BAD_REQUEST, e.into())
}

/// The one place registry errors become statuses.
pub fn from_result<T: Serialize>(
    ok: StatusCode,
    r: Result<T, RegistryError>,
) -> warp::reply::Response {
    match r {
        Ok(v) => json(ok, &v),
        Err(e) => registry_error(e),
    }
}

pub fn registry_error(e: RegistryError) -> warp::reply::Response {
    match e {
        RegistryError::Invalid(f) => invalid(f),
        RegistryError::Unrunnable(f) => error_reply(StatusCode::UNPROCESSABLE_ENTITY, f.into()),
        RegistryError::NotFound(m) => error_reply(StatusCode::NOT_FOUND, ErrorBody::new(m)),
        RegistryError::Conflict { message, field } => error_reply(
            StatusCode::CONFLICT,
            ErrorBody {
                error: message,
                field,
                holder: None,
            },
        ),
        RegistryError::LeaseConflict { message, holder } => error_reply(
            StatusCode::CONFLICT,
            ErrorBody {
                error: message,
                field: None,
                holder,
            },
        ),
        RegistryError::Store(e @ (StoreError::Stale | StoreError::LeaseMoved(_))) => {
            tracing::warn!(error = %e, "gave up deciding against other masters' writes");
            error_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new(format!("{e}; nothing was changed")),
            )
        }
        RegistryError::Store(e) => {
            tracing::error!(error = %e, "state store failed");
            error_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorBody::new(
                    "the master could not save the change; nothing was changed, retry later",
                ),
            )
        }
    }
}

/// The status [`registry_error`] answers `e` with.
pub fn registry_error_status(e: &RegistryError) -> StatusCode {
    match e {
        RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
        RegistryError::Unrunnable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Conflict { .. } | RegistryError::LeaseConflict { .. } => {
            StatusCode::CONFLICT
        }
        RegistryError::Store(StoreError::Stale | StoreError::LeaseMoved(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn no_content() -> warp::reply::Response {
    StatusCode::NO_CONTENT.into_response()
}
