//! The proxy's long-lived tasks, watched.
//!
//! Every task the proxy spawns at start (admin, listeners, certificate
//! renewal, the config subscription) runs until shutdown. One that ends
//! early, by returning or by panicking, leaves a process that may still
//! answer `/ready` and does nothing (a proxy that stopped renewing its
//! certificate, or stopped listening): better to exit non-zero with a log
//! line naming the task and let the orchestrator restart the proxy.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};

/// How a supervised task ended before shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It returned.
    Returned,
    /// It panicked.
    Panicked,
    /// It was cancelled (by nobody the supervisor knows of).
    Cancelled,
}

impl Ended {
    /// As a word for logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Returned => "returned",
            Self::Panicked => "panicked",
            Self::Cancelled => "was cancelled",
        }
    }
}

/// Named tasks that must outlive the process's serving phase.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    /// Spawns `task` under `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Resolves when a task ends (never, while all run): its name and how.
    pub async fn first_to_end(&mut self) -> (&'static str, Ended) {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            // Nothing supervised: nothing can end.
            return std::future::pending().await;
        };
        let (id, ended) = match joined {
            Ok((id, ())) => (id, Ended::Returned),
            Err(error) if error.is_panic() => (error.id(), Ended::Panicked),
            Err(error) => (error.id(), Ended::Cancelled),
        };
        (self.names.remove(&id).unwrap_or("unnamed"), ended)
    }

    /// Stops every task (at shutdown).
    pub fn abort_all(&mut self) {
        self.tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_first_task_to_end_is_named_with_how_it_ended() {
        let mut s = Supervisor::default();
        s.spawn("forever", std::future::pending());
        s.spawn("renewal", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            panic!("renewal bug");
        });
        s.spawn("admin", async {
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        assert_eq!(s.first_to_end().await, ("admin", Ended::Returned));
        assert_eq!(s.first_to_end().await, ("renewal", Ended::Panicked));
        // The one left runs on: nothing more ends, however long we wait.
        let more = tokio::time::timeout(Duration::from_secs(86_400), s.first_to_end()).await;
        assert!(more.is_err(), "{more:?}");
        s.abort_all();
    }
}
