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

    pub fn entries(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

/// Sends a welcome e-mail to every new user (here: prints it). Its instances form one consumer
/// group, so that each sign-up sends one e-mail, whichever instance sends it.
#[derive(Debug, Default, Clone)]
pub struct WelcomeEmail {
    /// This instance's name, for the output.
    pub name: String,
    /// `name -> address` of every e-mail sent; instances may share one log.
    pub sent: Log,
}

impl WelcomeEmail {
    /// The consumer group of every WelcomeEmail instance.
    pub const GROUP: &'static str = "welcome-email";

    pub fn named(name: &str, sent: &Log) -> Self {
        Self {
            name: name.to_owned(),
            sent: sent.clone(),
        }
    }
}

impl UserSignedUpObserver for WelcomeEmail {
    async fn user_signed_up(&self, event: Event<UserSignedUpEvent>) -> Result<(), HandlerError> {
        let user = event
            .user
            .as_ref()
            .ok_or("a sign-up event without its user")?;
        let again = match event.delivery_count() {
            0 | 1 => String::new(),
            n => format!(", delivery {n}: it may have been sent already"),
        };
        println!(
            "  {}: sending a welcome e-mail to {} (event {} from {}{again})",
            self.name,
            user.email,
            event.cursor().sequence,
            event.instance()
        );
        self.sent.push(format!("{} -> {}", self.name, user.email));
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
