//! How a service answers over gRPC when its database fails.

use tonic::Status;
use trustmesh_store::StoreError;

/// The status for an error of `service`'s store, logged: `Unavailable`
/// when the client may retry (a busy database, or a write whose outcome is
/// unknown while the service stops to recover its database: the writer
/// logged why), else `Internal` with no detail for the client.
pub fn store_status(service: &'static str, e: &StoreError) -> Status {
    if let Some(message) = e.unavailable_message() {
        tracing::warn!(service, error = %e, "store unavailable");
        return Status::unavailable(message);
    }
    tracing::error!(service, error = %e, "store failed");
    Status::internal("storage failure")
}

#[cfg(test)]
mod tests {
    use super::store_status;
    use trustmesh_store::StoreError;

    #[test]
    fn retryable_failures_are_unavailable_and_the_rest_internal() {
        let unknown = store_status("wallet", &StoreError::NotDurable("disk gone".into()));
        assert_eq!(unknown.code(), tonic::Code::Unavailable);
        assert_eq!(
            Some(unknown.message()),
            StoreError::NotDurable(String::new()).unavailable_message()
        );
        let failed = store_status("wallet", &StoreError::GroupCommit("broken".into()));
        assert_eq!(failed.code(), tonic::Code::Internal);
        assert_eq!(failed.message(), "storage failure");
    }
}
