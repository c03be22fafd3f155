//! [`Members`]: the instances of a set, found by address in constant time, so that applying
//! a discovery answer of n instances costs O(n), not O(n²).

use std::collections::HashMap;
use std::sync::Arc;

use super::super::instance::Instance;

#[derive(Default)]
pub(super) struct Members {
    list: Vec<Arc<Instance>>,
    /// Where each instance is in `list`, by its address.
    index: HashMap<String, usize>,
}

impl Members {
    /// Adds `instance`, in place of one at the same address.
    pub(super) fn push(&mut self, instance: Arc<Instance>) {
        match self.index.get(&instance.key) {
            Some(&at) => self.list[at] = instance,
            None => {
                self.index.insert(instance.key.clone(), self.list.len());
                self.list.push(instance);
            }
        }
    }

    pub(super) fn get(&self, authority: &str) -> Option<&Arc<Instance>> {
        self.index.get(authority).map(|&at| &self.list[at])
    }

    pub(super) fn remove(&mut self, authority: &str) -> Option<Arc<Instance>> {
        let at = self.index.remove(authority)?;
        let removed = self.list.swap_remove(at);
        if let Some(moved) = self.list.get(at) {
            self.index.insert(moved.key.clone(), at);
        }
        Some(removed)
    }
}

impl std::ops::Deref for Members {
    type Target = [Arc<Instance>];

    fn deref(&self) -> &[Arc<Instance>] {
        &self.list
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn instance(key: &str) -> Arc<Instance> {
        Arc::new(Instance::new(
            key.into(),
            tonic::transport::Endpoint::from_static("http://127.0.0.1:1"),
            crate::discovery::Placement::default(),
        ))
    }

    #[test]
    fn instances_are_found_by_address_after_removals_move_others() {
        let mut members = Members::default();
        for key in ["a:1", "b:1", "c:1", "d:1"] {
            members.push(instance(key));
        }
        assert_eq!(members.remove("a:1").unwrap().key, "a:1");
        assert!(members.remove("a:1").is_none());
        assert!(members.get("a:1").is_none());
        for key in ["b:1", "c:1", "d:1"] {
            assert_eq!(members.get(key).unwrap().key, key);
        }
        members.push(instance("c:1"));
        assert_eq!(members.len(), 3);
        members.remove("d:1");
        members.remove("b:1");
        assert_eq!(
            members.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["c:1"]
        );
    }
}
