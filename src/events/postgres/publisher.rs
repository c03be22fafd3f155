//! The Postgres side of [`Publisher`]: opening one on a stream, publishing inside a
//! transaction, committing, and letting the stream's name go.

use std::sync::Arc;

use prost::Message;

use crate::events::error::PublishError;
use crate::events::publisher::new_epoch;
use crate::events::{EventRpc, Publisher, PublisherSettings};
use crate::Error;

impl Publisher {
    /// A publisher whose events are kept in the `meshless` schema of `pool`'s database under
    /// the stream `name`, and published inside transactions (see
    /// [`postgres`](crate::events::postgres)).
    #[doc(hidden)]
    pub async fn open_postgres(
        service: &str,
        rpcs: &[EventRpc],
        settings: PublisherSettings,
        pool: &sqlx::PgPool,
        name: &str,
    ) -> Result<Self, Error> {
        settings.check_retain(service, rpcs);
        let pg_rpcs = rpcs
            .iter()
            .map(|rpc| super::Rpc {
                hub: settings.configure(rpc, format!("{service}/{}", rpc.name), 0),
                retain: settings.retain_of(rpc),
                limits: settings.limits(rpc),
            })
            .collect();
        let opened = super::open(pool, name, pg_rpcs, new_epoch()).await?;
        Ok(Self {
            hubs: opened.hubs.into(),
            stream: Some(Arc::new(opened.stream)),
        })
    }

    #[doc(hidden)]
    pub async fn publish_in<T: Message>(
        &self,
        rpc: usize,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        event: &T,
    ) -> Result<(), sqlx::Error> {
        let hub = &self.hubs[rpc];
        match &self.stream {
            Some(stream) => stream.publish_in(hub, tx, event).await,
            None => Err(sqlx::Error::Encode(Box::new(PublishError::Io {
                rpc: hub.method.clone(),
                reason: "this publisher keeps its events in memory or in files; open it with \
                         open_postgres to publish inside a transaction"
                    .to_owned(),
            }))),
        }
    }

    /// Commits a transaction that published with `publish_*_in`, and has its events served
    /// at once (after a plain `tx.commit()` they are served within milliseconds). Returns the
    /// database's error when the commit fails: then nothing it published is served.
    pub async fn commit(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        if let Some(stream) = &self.stream {
            stream.committed();
        }
        Ok(())
    }

    /// For a publisher on Postgres: stops numbering and serving new events, and lets the
    /// stream's name go; returns once another publisher may open it. Events already served
    /// are still served. Dropping the last clone of the publisher lets the name go too, but
    /// in the background.
    pub async fn release(&self) {
        if let Some(stream) = &self.stream {
            stream.release().await;
        }
    }
}
