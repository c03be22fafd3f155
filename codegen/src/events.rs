//! Generates the event side of a service: `{Service}Publisher` for producers, and for
//! observers one `{Event}Observer` trait per event RPC plus `{Service}Observer`, which
//! subscribes the observers given to it.
//!
//! One trait per event RPC (rather than one trait with a default method per event) lets the
//! compiler know which events an observer handles, so exactly those are subscribed to.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::docs;
use crate::model::{Method, Service, Shape};
use crate::server::{event_index, rust_type};

fn event_methods(service: &Service) -> impl Iterator<Item = (&Method, u64, bool)> {
    service.methods.iter().filter_map(|m| match &m.shape {
        Shape::Event(options) => Some((m, options.retain, options.compact_by_key)),
        _ => None,
    })
}

pub(crate) fn publisher(service: &Service) -> TokenStream {
    let publisher = format_ident!("{}Publisher", service.proto_name);
    let service_ty = format_ident!("{}Service", service.proto_name);
    let full_name = &service.full_name;
    let doc = docs::lines(&[
        format!("Publishes the events of `{full_name}`, which [`{service_ty}`] serves to every subscriber."),
        String::new(),
        "`publish_*` never waits on subscribers: each event is encoded once and kept for resume (the".to_owned(),
        "last `retain` of each event RPC), and every subscriber reads it from there. An event too large".to_owned(),
        "for the streams is refused. Clones publish into the same streams, so give one to each handler".to_owned(),
        "that publishes.".to_owned(),
    ]);
    let rpcs = event_methods(service).map(|(method, retain, compact_by_key)| {
        let name = &method.proto_name;
        let key = key_path(method);
        let event = &method.output_message;
        quote! {
            ::meshless::events::EventRpc {
                name: #name,
                retain: #retain,
                key: #key,
                compact_by_key: #compact_by_key,
                event: #event,
                descriptors: FILE_DESCRIPTOR_SET,
            }
        }
    });
    let methods = event_methods(service).map(|(method, retain, compact_by_key)| {
        let publish = format_ident!("publish_{}", method.name);
        let event = rust_type(&method.output_type);
        let index = event_index(service, method);
        let mut lines = method.docs.clone();
        if !lines.is_empty() {
            lines.push(String::new());
        }
        lines.push(format!(
            "Publishes one `{}` event (kept: the last {} events{}) and returns its cursor; refuses an \
             event too large to deliver (`PublishError::TooLarge`), which is then not kept.",
            method.proto_name,
            if retain == 0 {
                "1024".to_owned()
            } else {
                retain.to_string()
            },
            if compact_by_key {
                ", and the latest of every key"
            } else {
                ""
            }
        ));
        let doc = docs::lines(&lines);
        let publish_durable = format_ident!("publish_{}_durable", method.name);
        let durable_doc = docs::lines(&[
            format!("Publishes one `{}` event as [`{publish}`](Self::{publish}) does, and returns once it is", method.proto_name),
            "on stable storage (`fdatasync`; publishes waiting at once share one), for a handler that must".to_owned(),
            "not answer before the event is safe from a crash of the machine. A publisher without a".to_owned(),
            "directory (`new`) has no storage: it returns at once.".to_owned(),
        ]);
        let publish_batch = format_ident!("publish_{}_batch", method.name);
        let batch_doc = docs::lines(&[
            format!("Publishes `events` of `{}` as [`{publish}`](Self::{publish}) does each, all or none, under", method.proto_name),
            "consecutive sequences, and returns the last one's cursor (`None` for no events). The batch".to_owned(),
            "takes the event RPC's lock once, is written to the event log at once (a publisher with a".to_owned(),
            "directory; a crash during that write keeps none of it) and wakes each subscriber once:".to_owned(),
            "cheaper per event than one publish each for small events. One event too large refuses the batch, as does a".to_owned(),
            "batch over 64 MiB encoded (`PublishError::BatchTooLarge`); a failed write publishes none of it.".to_owned(),
        ]);
        let publish_batch_durable = format_ident!("publish_{}_batch_durable", method.name);
        let batch_durable_doc = docs::lines(&[
            format!("Publishes `events` of `{}` as [`{publish_batch}`](Self::{publish_batch}) does, and returns", method.proto_name),
            "once they are on stable storage (syncs are shared with other durable publishes; at once for".to_owned(),
            "a publisher without a directory).".to_owned(),
        ]);
        quote! {
            #doc
            pub fn #publish(&self, event: #event) -> ::core::result::Result<::meshless::v1::Cursor, ::meshless::events::PublishError> {
                self.inner.publish(#index, &event)
            }

            #batch_doc
            pub fn #publish_batch(&self, events: &[#event]) -> ::core::result::Result<::core::option::Option<::meshless::v1::Cursor>, ::meshless::events::PublishError> {
                self.inner.publish_batch(#index, events)
            }

            #batch_durable_doc
            pub async fn #publish_batch_durable(&self, events: &[#event]) -> ::core::result::Result<::core::option::Option<::meshless::v1::Cursor>, ::meshless::events::PublishError> {
                self.inner.publish_batch_durable(#index, events).await
            }

            #durable_doc
            pub async fn #publish_durable(&self, event: #event) -> ::core::result::Result<::meshless::v1::Cursor, ::meshless::events::PublishError> {
                self.inner.publish_durable(#index, &event).await
            }
        }
    });
    let postgres = postgres_methods(service);
    quote! {
        #doc
        #[derive(Debug, Clone)]
        pub struct #publisher {
            inner: ::meshless::events::Publisher,
        }

        impl ::core::default::Default for #publisher {
            fn default() -> Self {
                Self::new()
            }
        }

        #[allow(dead_code)]
        impl #publisher {
            const EVENT_RPCS: &'static [::meshless::events::EventRpc] = &[#(#rpcs),*];

            /// A publisher with a new epoch and the default settings.
            pub fn new() -> Self {
                Self::with_settings(::core::default::Default::default())
            }

            /// A publisher with a new epoch and these settings (subscriber buffer, retention).
            pub fn with_settings(settings: ::meshless::events::PublisherSettings) -> Self {
                Self { inner: ::meshless::events::Publisher::new(#full_name, Self::EVENT_RPCS, settings) }
            }

            /// A publisher whose events are kept in files under `dir` (one folder per event
            /// RPC), so that they survive a crash or restart of the process: reopening the
            /// directory continues the epoch and the sequences, and observers resume exactly.
            /// `publish_*` returns once the event is written to its file; `publish_*_durable`
            /// once it is on stable storage. Fails when the directory cannot be read or written.
            pub fn open(dir: impl ::core::convert::AsRef<::std::path::Path>) -> ::core::result::Result<Self, ::meshless::Error> {
                Self::open_with_settings(dir, ::core::default::Default::default())
            }

            /// [`open`](Self::open), with these settings.
            pub fn open_with_settings(
                dir: impl ::core::convert::AsRef<::std::path::Path>,
                settings: ::meshless::events::PublisherSettings,
            ) -> ::core::result::Result<Self, ::meshless::Error> {
                ::meshless::events::Publisher::open(#full_name, Self::EVENT_RPCS, settings, dir.as_ref())
                    .map(|inner| Self { inner })
            }

            /// The untyped publisher underneath: epoch and counters.
            pub fn as_publisher(&self) -> &::meshless::events::Publisher {
                &self.inner
            }

            #(#methods)*
        }

        #postgres
    }
}

/// The publisher's Postgres methods (`open_postgres`, `publish_*_in`, `commit`), which exist
/// when meshless is built with its `postgres` feature.
fn postgres_methods(service: &Service) -> TokenStream {
    let publisher = format_ident!("{}Publisher", service.proto_name);
    let full_name = &service.full_name;
    let methods = event_methods(service).map(|(method, _, _)| {
        let publish = format_ident!("publish_{}", method.name);
        let publish_in = format_ident!("publish_{}_in", method.name);
        let event = rust_type(&method.output_type);
        let index = event_index(service, method);
        let doc = docs::lines(&[
            format!("Publishes one `{}` event inside the transaction `tx`: it is delivered once the", method.proto_name),
            "transaction commits, and never if it rolls back. Returns the database's error, or".to_owned(),
            format!("`sqlx::Error::Encode` holding a `PublishError` for an event [`{publish}`](Self::{publish})"),
            "would refuse. The publisher must have been opened with `open_postgres` on the same".to_owned(),
            "database. Commit with [`commit`](Self::commit) to have it served at once.".to_owned(),
        ]);
        quote! {
            #doc
            pub async fn #publish_in(
                &self,
                tx: &mut ::meshless::codegen::sqlx::Transaction<'_, ::meshless::codegen::sqlx::Postgres>,
                event: #event,
            ) -> ::core::result::Result<(), ::meshless::codegen::sqlx::Error> {
                self.inner.publish_in(#index, tx, &event).await
            }
        }
    });
    quote! {
        ::meshless::codegen::with_postgres! {
            #[allow(dead_code)]
            impl #publisher {
                /// A publisher whose events are kept in the `meshless` schema of `pool`'s database as
                /// the stream `name` (created and migrated on open), published inside transactions
                /// with `publish_*_in`. A publisher opened later with the same name continues its
                /// epoch and sequences. Fails when the database fails, when its schema is newer
                /// than this meshless knows, or when another live publisher serves `name`
                /// (`Error::is_stream_in_use`).
                pub async fn open_postgres(
                    pool: &::meshless::codegen::sqlx::PgPool,
                    name: &str,
                ) -> ::core::result::Result<Self, ::meshless::Error> {
                    Self::open_postgres_with_settings(pool, name, ::core::default::Default::default()).await
                }

                /// [`open_postgres`](Self::open_postgres), with these settings.
                pub async fn open_postgres_with_settings(
                    pool: &::meshless::codegen::sqlx::PgPool,
                    name: &str,
                    settings: ::meshless::events::PublisherSettings,
                ) -> ::core::result::Result<Self, ::meshless::Error> {
                    ::meshless::events::Publisher::open_postgres(#full_name, Self::EVENT_RPCS, settings, pool, name)
                        .await
                        .map(|inner| Self { inner })
                }

                /// Commits `tx`, in which events were published with `publish_*_in`, and has them
                /// served at once. Returns the database's error when the commit fails.
                pub async fn commit(
                    &self,
                    tx: ::meshless::codegen::sqlx::Transaction<'_, ::meshless::codegen::sqlx::Postgres>,
                ) -> ::core::result::Result<(), ::meshless::codegen::sqlx::Error> {
                    self.inner.commit(tx).await
                }

                #(#methods)*
            }
        }
    }
}

pub(crate) fn observer(service: &Service) -> TokenStream {
    let observer = format_ident!("{}Observer", service.proto_name);
    let full_name = &service.full_name;
    let traits = event_methods(service).map(|(method, _, _)| {
        let trait_name = format_ident!("{}Observer", method.proto_name);
        let name = format_ident!("{}", method.name);
        let event = rust_type(&method.output_type);
        let mut lines = method.docs.clone();
        if !lines.is_empty() {
            lines.push(String::new());
        }
        lines.push(format!(
            "Handles the `{}` events of `{full_name}`: implement it with a plain `async fn`, and give it to [`{observer}::{}`].",
            method.proto_name, method.name
        ));
        lines.push(String::new());
        lines.push("Events from one producer instance arrive in order, one at a time. An error is retried, then the".to_owned());
        lines.push("event is dead-lettered (see `meshless::events::ObserverOptions`).".to_owned());
        let doc = docs::lines(&lines);
        quote! {
            #doc
            pub trait #trait_name: ::core::marker::Send + ::core::marker::Sync + 'static {
                /// Handles one event.
                fn #name(
                    &self,
                    event: ::meshless::events::Event<#event>,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<(), ::meshless::events::HandlerError>> + ::core::marker::Send;
            }
        }
    });
    let registrations = event_methods(service).map(|(method, _, _)| {
        let trait_name = format_ident!("{}Observer", method.proto_name);
        let name = format_ident!("{}", method.name);
        let event = rust_type(&method.output_type);
        let path = format!("/{full_name}/{}", method.proto_name);
        let keyed = method.key.is_some();
        let doc = format!(" Subscribes to `{}` and hands its events to `observer`.", method.proto_name);
        let filter = format_ident!("{}_filter", method.name);
        let filter_doc = docs::lines(&[
            format!("Takes only the `{}` events that match `filter`, which the producers evaluate: events", method.proto_name),
            "filtered out never cross the network. `start` checks it against the event message.".to_owned(),
        ]);
        let event_name = &method.output_message;
        quote! {
            #filter_doc
            pub fn #filter(self, filter: ::meshless::events::Filter) -> Self {
                Self { inner: self.inner.filter(#path, FILE_DESCRIPTOR_SET, #event_name, filter) }
            }

            #[doc = #doc]
            pub fn #name<O: #trait_name>(self, observer: impl ::core::convert::Into<::std::sync::Arc<O>>) -> Self {
                let observer: ::std::sync::Arc<O> = observer.into();
                Self {
                    inner: self.inner.observe::<#event, _, _>(#path, #keyed, move |event| {
                        let observer = observer.clone();
                        async move { observer.#name(event).await }
                    }),
                }
            }
        }
    });
    let doc = docs::lines(&[
        format!("Observes the events of `{full_name}` on every instance of a target."),
        String::new(),
        "Give it one observer per event RPC of interest, then [`Self::start`] it: only those events".to_owned(),
        "are subscribed to, on every producer instance the target resolves to.".to_owned(),
    ]);
    quote! {
        #(#traits)*

        #doc
        #[derive(Debug)]
        #[must_use]
        pub struct #observer {
            inner: ::meshless::events::ObserverBuilder,
        }

        impl ::core::default::Default for #observer {
            fn default() -> Self {
                Self::new()
            }
        }

        #[allow(dead_code)]
        impl #observer {
            /// An observer of no event yet, with the default options.
            pub fn new() -> Self {
                Self { inner: ::meshless::events::ObserverBuilder::new(#full_name) }
            }

            /// Sets the options: retries, reconnection, heartbeats, gap and dead-letter callbacks.
            pub fn options(self, options: ::meshless::events::ObserverOptions) -> Self {
                Self { inner: self.inner.options(options) }
            }

            #(#registrations)*

            /// Starts observing every instance of `target` (`dns+srv:///users.service.consul`,
            /// `ipv4:...`, any target a client takes); returns a handle to stop it gracefully.
            pub async fn start(self, target: impl ::core::convert::AsRef<str>) -> ::core::result::Result<::meshless::events::ObserverHandle, ::meshless::Error> {
                self.inner.start(target.as_ref()).await
            }
        }
    }
}

/// `Some(KeyPath { .. })` for a method with a key (an event's, or a call's routing key);
/// `None` otherwise.
pub(crate) fn key_path(method: &Method) -> TokenStream {
    match &method.key {
        Some(key) => {
            let numbers = &key.numbers;
            let kind = format_ident!("{}", key.kind);
            quote! {
                ::core::option::Option::Some(::meshless::codegen::KeyPath {
                    fields: &[#(#numbers),*],
                    kind: ::meshless::codegen::KeyKind::#kind,
                })
            }
        }
        None => quote! { ::core::option::Option::None },
    }
}
