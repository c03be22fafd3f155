//! [`Progress`]: where one stream stands with its producer. The cursor (every event up to it
//! handled), the events handled past it (keyed lanes finish events of different keys out of
//! order), and the cursor store that keeps both for a plain observer's restart.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::cursors::CursorStore;
use crate::v1::Cursor;

pub(crate) struct Progress {
    rpc: &'static str,
    /// After the last event handled: for a plain observer, every event up to it was handled;
    /// for a group member, the last one handled in delivery order.
    pub(crate) cursor: Option<Cursor>,
    /// The epoch of `ahead`'s events.
    ahead_epoch: u64,
    /// Sequences past the cursor handled already: not handled again when they come again (a
    /// resubscription or a restart resumes from the cursor).
    ahead: BTreeSet<u64>,
    /// A plain observer's cursor store.
    store: Option<Arc<dyn CursorStore>>,
}

impl Progress {
    pub(crate) fn new(rpc: &'static str, store: Option<Arc<dyn CursorStore>>) -> Self {
        Self {
            rpc,
            cursor: None,
            ahead_epoch: 0,
            ahead: BTreeSet::new(),
            store,
        }
    }

    /// Resumes reading producer `epoch` after `cursor`, with `ahead` handled already.
    pub(crate) fn resume(&mut self, epoch: u64, cursor: Option<Cursor>, ahead: BTreeSet<u64>) {
        self.cursor = cursor;
        self.ahead_epoch = epoch;
        self.ahead = ahead;
        self.pass_ahead();
    }

    /// Whether the event at `cursor` was handled already, past the cursor.
    pub(crate) fn handled_ahead(&self, cursor: Cursor) -> bool {
        cursor.epoch == self.ahead_epoch && self.ahead.contains(&cursor.sequence)
    }

    /// Everything up to `cursor` is handled.
    pub(crate) fn moved(&mut self, cursor: Cursor) {
        self.cursor = Some(cursor);
        self.pass_ahead();
        if let Some(store) = &self.store {
            store.handled(self.rpc, cursor);
        }
    }

    /// The stream starts after `cursor`, where the producer said: kept in the cursor store, so
    /// that a restart resumes from there even if nothing was handled before it.
    pub(crate) fn started_after(&self, cursor: Cursor) {
        if let Some(store) = &self.store {
            store.handled(self.rpc, cursor);
        }
    }

    /// The event at `finished` was handled: remembered if an event before it is not handled.
    pub(crate) fn finished_ahead(&mut self, finished: Cursor) {
        let behind = self
            .cursor
            .is_some_and(|c| c.epoch == finished.epoch && c.sequence >= finished.sequence);
        if behind {
            return;
        }
        if finished.epoch != self.ahead_epoch {
            self.ahead_epoch = finished.epoch;
            self.ahead.clear();
        }
        self.ahead.insert(finished.sequence);
        if let Some(store) = &self.store {
            store.handled_ahead(self.rpc, finished);
        }
    }

    /// The sequences of producer `epoch` handled past the cursor.
    pub(crate) fn ahead_of(&self, epoch: u64) -> BTreeSet<u64> {
        if epoch == self.ahead_epoch {
            self.ahead.clone()
        } else {
            BTreeSet::new()
        }
    }

    fn pass_ahead(&mut self) {
        let Some(cursor) = self.cursor.filter(|c| c.epoch == self.ahead_epoch) else {
            return;
        };
        while self
            .ahead
            .first()
            .is_some_and(|&sequence| sequence <= cursor.sequence)
        {
            self.ahead.pop_first();
        }
    }
}
