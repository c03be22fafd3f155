//! The Users service of the sign-up flow, shared by the examples.

// Each example uses its own part of this module.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use meshless::{Request, Response, Status};

pub mod proto {
    meshless::include_proto!("signup.v1");
}

use proto::{
    GetUserRequest, SignUpReply, SignUpRequest, User, UserSignedUpEvent, UsersHandler,
    UsersPublisher,
};

/// The metadata key a Users instance names itself in, so callers can see who served them.
pub const SERVED_BY: &str = "x-served-by";

/// The users, shared by every instance (a stand-in for a database).
#[derive(Debug, Default)]
pub struct Store {
    users: HashMap<u64, User>,
}

/// One Users instance: it answers calls, and publishes every sign-up.
#[derive(Debug, Clone)]
pub struct Users {
    name: String,
    store: Arc<Mutex<Store>>,
    publisher: UsersPublisher,
}

impl Users {
    pub fn new(
        name: impl Into<String>,
        store: Arc<Mutex<Store>>,
        publisher: UsersPublisher,
    ) -> Self {
        Self {
            name: name.into(),
            store,
            publisher,
        }
    }

    fn reply<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        if let Ok(value) = self.name.parse() {
            response.metadata_mut().insert(SERVED_BY, value);
        }
        response
    }
}

impl UsersHandler for Users {
    async fn sign_up(
        &self,
        request: Request<SignUpRequest>,
    ) -> Result<Response<SignUpReply>, Status> {
        let SignUpRequest { email, name } = request.into_inner();
        if !email.contains('@') {
            return Err(Status::invalid_argument(format!(
                "`{email}` is not an e-mail address"
            )));
        }
        let mut store = self
            .store
            .lock()
            .map_err(|_| Status::internal("store poisoned"))?;
        if store.users.values().any(|user| user.email == email) {
            return Err(Status::already_exists(format!(
                "{email} has already signed up"
            )));
        }
        let id = store.users.len() as u64 + 1;
        let user = User { id, email, name };
        store.users.insert(id, user.clone());
        drop(store);
        self.publisher
            .publish_user_signed_up(UserSignedUpEvent { user: Some(user) })?;
        Ok(self.reply(SignUpReply { id }))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let id = request.get_ref().id;
        let store = self
            .store
            .lock()
            .map_err(|_| Status::internal("store poisoned"))?;
        match store.users.get(&id) {
            Some(user) => Ok(self.reply(user.clone())),
            None => Err(Status::not_found(format!("no user with id {id}"))),
        }
    }
}
