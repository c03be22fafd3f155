//! The observing services of the sign-up flow: WelcomeEmail and Feed.

// Each example uses its own part of this module.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use meshless::events::{Event, HandlerError};
use tokio::sync::Notify;

use crate::users::proto::{UserSignedUpEvent, UserSignedUpObserver};

/// What an observing service did, for the summary.
#[derive(Debug, Default, Clone)]
pub struct Log {
    entries: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
}

impl Log {
    fn push(&self, entry: String) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
        self.changed.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits until the log has `count` entries.
    pub async fn until(&self, count: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.len() >= count {
                return;
            }
            changed.await;
        }
    }
}

/// Sends a welcome e-mail to every new user (here: prints it).
#[derive(Debug, Default, Clone)]
pub struct WelcomeEmail {
    pub sent: Log,
}

impl UserSignedUpObserver for WelcomeEmail {
    async fn user_signed_up(&self, event: Event<UserSignedUpEvent>) -> Result<(), HandlerError> {
        let user = event
            .user
            .as_ref()
            .ok_or("a sign-up event without its user")?;
        println!(
            "  welcome-email: sending a welcome e-mail to {} (event {} from {})",
            user.email,
            event.cursor().sequence,
            event.instance()
        );
        self.sent.push(user.email.clone());
        Ok(())
    }
}

/// Adds every new user to the activity feed (here: prints it).
#[derive(Debug, Default, Clone)]
pub struct Feed {
    pub entries: Log,
}

impl UserSignedUpObserver for Feed {
    async fn user_signed_up(&self, event: Event<UserSignedUpEvent>) -> Result<(), HandlerError> {
        let user = event
            .user
            .as_ref()
            .ok_or("a sign-up event without its user")?;
        println!("  feed: {} joined (from {})", user.name, event.instance());
        self.entries.push(format!("{} joined", user.name));
        Ok(())
    }
}
