//! The RideShare handlers' error: the same JSON error type as the DBaaS API
//! (`{"error": "..."}` with a status), plus how validation failures map to it.

pub use dbaas_api::http::error::ApiError;

impl From<crate::validate::Invalid> for ApiError {
    fn from(e: crate::validate::Invalid) -> Self {
        ApiError::bad_request(e.0)
    }
}
