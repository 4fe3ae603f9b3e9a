//! The latch a database's writers set when they can no longer make a write
//! durable ([`crate::StoreError::NotDurable`]), and that a service waits on
//! to stop ([`crate::Db::failed`]).

use std::sync::Arc;

use tokio::sync::watch;

/// Why a database takes no more writes, once that is so; clones share it.
#[derive(Clone, Debug)]
pub(crate) struct Fault(Arc<watch::Sender<Option<String>>>);

impl Default for Fault {
    fn default() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }
}

impl Fault {
    /// The reason, once set.
    pub(crate) fn get(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Sets the fault to `why` unless it is set already; returns the
    /// reason that stands (the first one).
    pub(crate) fn set(&self, why: String) -> String {
        let mut standing = None;
        self.0.send_if_modified(|current| match current {
            Some(first) => {
                standing = Some(first.clone());
                false
            }
            None => {
                *current = Some(why.clone());
                true
            }
        });
        standing.unwrap_or(why)
    }

    /// Completes with the reason once the fault is set.
    pub(crate) async fn wait(&self) -> String {
        let mut changes = self.0.subscribe();
        let reason = changes
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // Every sender is gone, which cannot happen while `self` holds
            // one: a fault that can no longer be set never comes.
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fault;

    #[tokio::test]
    async fn the_first_reason_stands_and_wakes_every_waiter() {
        let fault = Fault::default();
        assert_eq!(fault.get(), None);
        let waiter = tokio::spawn({
            let fault = fault.clone();
            async move { fault.wait().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(fault.set("disk gone".into()), "disk gone");
        assert_eq!(fault.set("later".into()), "disk gone");
        assert_eq!(waiter.await.ok(), Some("disk gone".to_owned()));
        assert_eq!(fault.clone().wait().await, "disk gone");
    }
}
