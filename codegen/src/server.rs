//! Generates the producer side of a service: the `{Service}Handler` trait users implement, and
//! `{Service}Service`, the tonic service that serves a handler.
//!
//! The handler trait uses plain `async fn` (return-position `impl Future + Send`), so users
//! need no macro. Underneath, a hidden adapter implements tonic's generated server trait by
//! calling the handler, and `{Service}Service` wraps tonic's server type, so everything tonic
//! does on the wire stays exactly as tonic does it.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::docs;
use crate::model::{Method, Service, Shape};

pub(crate) fn generate(service: &Service) -> TokenStream {
    let names = Names::new(service);
    let handler_trait = handler_trait(service, &names);
    let adapter = adapter(service, &names);
    let service_type = service_type(service, &names);
    quote! {
        #handler_trait
        #adapter
        #service_type
    }
}

struct Names {
    handler: syn::Ident,
    adapter: syn::Ident,
    service: syn::Ident,
    tonic_module: syn::Ident,
    tonic_trait: syn::Ident,
    tonic_server: syn::Ident,
}

impl Names {
    fn new(service: &Service) -> Self {
        let proto = &service.proto_name;
        Self {
            handler: format_ident!("{proto}Handler"),
            adapter: format_ident!("{proto}HandlerAdapter"),
            service: format_ident!("{proto}Service"),
            tonic_module: format_ident!("{}", service.tonic_server_module),
            tonic_trait: format_ident!("{proto}"),
            tonic_server: format_ident!("{proto}Server"),
        }
    }
}

pub(crate) fn rust_type(path: &str) -> syn::Type {
    // prost-build hands us valid Rust paths; a failure here is a bug in this crate, not in the
    // user's input, which has been validated already.
    syn::parse_str(path).unwrap_or_else(|e| panic!("meshless-build: bad type path `{path}`: {e}"))
}

fn stream_type(method: &Method) -> syn::Ident {
    format_ident!("{}Stream", method.proto_name)
}

fn handler_trait(service: &Service, names: &Names) -> TokenStream {
    let Names {
        handler,
        service: service_ty,
        ..
    } = names;
    let full_name = &service.full_name;
    let intro = format!(
        "The request-response RPCs of `{full_name}`: implement this trait with plain `async fn`s and serve it with [`{service_ty}`]."
    );
    let mut our_docs = vec![intro.as_str()];
    let events_note;
    if service.has_events() {
        events_note = format!(
            "The event RPCs of `{full_name}` are not part of this trait: the framework serves them."
        );
        our_docs.push("");
        our_docs.push(&events_note);
    }
    let doc = docs::with_proto_comments(&service.docs, &our_docs);
    let items = service.methods.iter().map(|method| {
        let name = format_ident!("{}", method.name);
        let input = rust_type(&method.input_type);
        let output = rust_type(&method.output_type);
        let doc = docs::lines(&method.docs);
        let deprecated = method.deprecated.then(|| quote! { #[deprecated] });
        let stream = stream_type(method);
        let stream_doc = format!(" The stream of `{}` responses returned by [`Self::{}`].", method.output_type, method.name);
        let result = |response: TokenStream| {
            quote! {
                impl ::core::future::Future<
                    Output = ::core::result::Result<::meshless::Response<#response>, ::meshless::Status>,
                > + ::core::marker::Send
            }
        };
        let stream_item = quote! {
            #[doc = #stream_doc]
            type #stream: ::meshless::codegen::tonic::codegen::tokio_stream::Stream<
                Item = ::core::result::Result<#output, ::meshless::Status>,
            > + ::core::marker::Send + 'static;
        };
        match &method.shape {
            Shape::Event(_) => quote! {},
            Shape::Unary => {
                let result = result(quote! { #output });
                quote! {
                    #doc #deprecated
                    fn #name(&self, request: ::meshless::Request<#input>) -> #result;
                }
            }
            Shape::ClientStreaming => {
                let result = result(quote! { #output });
                quote! {
                    #doc #deprecated
                    fn #name(&self, request: ::meshless::Request<::meshless::Streaming<#input>>) -> #result;
                }
            }
            Shape::ServerStreaming => {
                let result = result(quote! { Self::#stream });
                quote! {
                    #stream_item
                    #doc #deprecated
                    fn #name(&self, request: ::meshless::Request<#input>) -> #result;
                }
            }
            Shape::Streaming => {
                let result = result(quote! { Self::#stream });
                quote! {
                    #stream_item
                    #doc #deprecated
                    fn #name(&self, request: ::meshless::Request<::meshless::Streaming<#input>>) -> #result;
                }
            }
        }
    });
    quote! {
        #doc
        pub trait #handler: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#items)*
        }
    }
}

/// A hidden type implementing tonic's generated server trait by delegating to the handler.
fn adapter(service: &Service, names: &Names) -> TokenStream {
    let Names {
        handler,
        adapter,
        tonic_module,
        tonic_trait,
        ..
    } = names;
    let methods = service.methods.iter().map(|method| {
        let name = format_ident!("{}", method.name);
        let input = rust_type(&method.input_type);
        let output = rust_type(&method.output_type);
        let stream = stream_type(method);
        let allow_deprecated = method.deprecated.then(|| quote! { #[allow(deprecated)] });
        let result = |response: TokenStream| {
            quote! { ::core::result::Result<::meshless::Response<#response>, ::meshless::Status> }
        };
        match &method.shape {
            Shape::Unary => {
                let result = result(quote! { #output });
                quote! {
                    #allow_deprecated
                    async fn #name(&self, request: ::meshless::Request<#input>) -> #result {
                        self.handler.#name(request).await
                    }
                }
            }
            Shape::ClientStreaming => {
                let result = result(quote! { #output });
                quote! {
                    #allow_deprecated
                    async fn #name(&self, request: ::meshless::Request<::meshless::Streaming<#input>>) -> #result {
                        self.handler.#name(request).await
                    }
                }
            }
            Shape::ServerStreaming => {
                let result = result(quote! { Self::#stream });
                quote! {
                    type #stream = H::#stream;
                    #allow_deprecated
                    async fn #name(&self, request: ::meshless::Request<#input>) -> #result {
                        self.handler.#name(request).await
                    }
                }
            }
            Shape::Streaming => {
                let result = result(quote! { Self::#stream });
                quote! {
                    type #stream = H::#stream;
                    #allow_deprecated
                    async fn #name(&self, request: ::meshless::Request<::meshless::Streaming<#input>>) -> #result {
                        self.handler.#name(request).await
                    }
                }
            }
            Shape::Event(_) => {
                let result = result(quote! { Self::#stream });
                let index = event_index(service, method);
                quote! {
                    type #stream = ::meshless::events::EventStream<#output>;
                    async fn #name(&self, request: ::meshless::Request<#input>) -> #result {
                        self.publisher.as_publisher().subscribe(#index, request)
                    }
                }
            }
        }
    });
    let publisher_field = service.has_events().then(|| {
        let publisher = format_ident!("{}Publisher", service.proto_name);
        quote! { publisher: #publisher, }
    });
    quote! {
        #[doc(hidden)]
        pub struct #adapter<H> {
            handler: ::std::sync::Arc<H>,
            #publisher_field
        }

        impl<H> ::core::fmt::Debug for #adapter<H> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#adapter)).finish_non_exhaustive()
            }
        }

        #[::meshless::codegen::tonic::codegen::async_trait]
        impl<H: #handler> #tonic_module::#tonic_trait for #adapter<H> {
            #(#methods)*
        }
    }
}

fn service_type(service: &Service, names: &Names) -> TokenStream {
    let Names {
        handler,
        adapter,
        service: service_ty,
        tonic_module,
        tonic_server,
        ..
    } = names;
    let full_name = &service.full_name;
    let doc = docs::lines(&[
        format!("Serves a [`{handler}`] as the gRPC service `{full_name}`."),
        String::new(),
        "It is an ordinary tonic service: add it to `meshless::Server` (which also registers it"
            .to_owned(),
        "for health checking and reflection) or to `tonic::transport::Server`. Cloning is cheap:"
            .to_owned(),
        "clones share the handler.".to_owned(),
    ]);
    let tonic = quote! { ::meshless::codegen::tonic };
    let publisher_accessor = service.has_events().then(|| {
        quote! {
            fn publisher(&self) -> ::core::option::Option<&::meshless::events::Publisher> {
                ::core::option::Option::Some(self.publisher.as_publisher())
            }
        }
    });
    let (publisher_field, constructors, publisher_clone) = if service.has_events() {
        let publisher = format_ident!("{}Publisher", service.proto_name);
        let constructors = quote! {
            /// Serves `handler`, with a new publisher for the event RPCs (see
            /// [`Self::publisher`]; to publish from the handler, create the publisher first and
            /// use [`Self::with_publisher`]).
            pub fn new(handler: H) -> Self {
                Self::with_publisher(handler, #publisher::new())
            }

            /// Serves `handler`, and the event RPCs from `publisher`.
            pub fn with_publisher(handler: H, publisher: #publisher) -> Self {
                Self::from_arc_with_publisher(::std::sync::Arc::new(handler), publisher)
            }

            /// Serves a handler that is shared with other code, and the event RPCs from
            /// `publisher`.
            pub fn from_arc_with_publisher(handler: ::std::sync::Arc<H>, publisher: #publisher) -> Self {
                Self {
                    inner: #tonic_module::#tonic_server::new(#adapter { handler, publisher: publisher.clone() })
                        .max_encoding_message_size(::meshless::DEFAULT_MAX_MESSAGE_SIZE),
                    publisher,
                }
            }

            /// The publisher whose events the event RPCs serve.
            pub fn publisher(&self) -> &#publisher {
                &self.publisher
            }
        };
        (
            quote! { publisher: #publisher, },
            constructors,
            quote! { publisher: self.publisher.clone(), },
        )
    } else {
        let constructors = quote! {
            /// Serves `handler`.
            pub fn new(handler: H) -> Self {
                Self::from_arc(::std::sync::Arc::new(handler))
            }

            /// Serves a handler that is shared with other code.
            pub fn from_arc(handler: ::std::sync::Arc<H>) -> Self {
                Self {
                    inner: #tonic_module::#tonic_server::new(#adapter { handler })
                        .max_encoding_message_size(::meshless::DEFAULT_MAX_MESSAGE_SIZE),
                }
            }
        };
        (quote! {}, constructors, quote! {})
    };
    let keep_publisher = service
        .has_events()
        .then(|| quote! { publisher: self.publisher, });
    quote! {
        #doc
        pub struct #service_ty<H> {
            inner: #tonic_module::#tonic_server<#adapter<H>>,
            #publisher_field
        }

        #[allow(dead_code)]
        impl<H: #handler> #service_ty<H> {
            #constructors

            /// Limits the size of a decoded request message (default: 4 MiB).
            #[must_use]
            pub fn max_decoding_message_size(self, limit: usize) -> Self {
                Self { inner: self.inner.max_decoding_message_size(limit), #keep_publisher }
            }

            /// Limits the size of an encoded response message (default: 4 MiB).
            #[must_use]
            pub fn max_encoding_message_size(self, limit: usize) -> Self {
                Self { inner: self.inner.max_encoding_message_size(limit), #keep_publisher }
            }
        }

        impl<H> ::core::clone::Clone for #service_ty<H> {
            fn clone(&self) -> Self {
                Self { inner: self.inner.clone(), #publisher_clone }
            }
        }

        impl<H> ::core::fmt::Debug for #service_ty<H> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#service_ty)).field("service", &#full_name).finish_non_exhaustive()
            }
        }

        impl<H> #tonic::server::NamedService for #service_ty<H> {
            const NAME: &'static str = #full_name;
        }

        impl<H> ::meshless::server::DescribedService for #service_ty<H> {
            fn file_descriptor_set() -> &'static [u8] {
                FILE_DESCRIPTOR_SET
            }
            #publisher_accessor
        }

        impl<H, B> #tonic::codegen::Service<#tonic::codegen::http::Request<B>> for #service_ty<H>
        where
            H: #handler,
            B: #tonic::codegen::Body + ::core::marker::Send + 'static,
            B::Error: ::core::convert::Into<#tonic::codegen::StdError> + ::core::marker::Send + 'static,
        {
            type Response = #tonic::codegen::http::Response<#tonic::body::Body>;
            type Error = ::core::convert::Infallible;
            type Future = #tonic::codegen::BoxFuture<Self::Response, Self::Error>;

            fn poll_ready(
                &mut self,
                cx: &mut ::core::task::Context<'_>,
            ) -> ::core::task::Poll<::core::result::Result<(), Self::Error>> {
                #tonic::codegen::Service::<#tonic::codegen::http::Request<B>>::poll_ready(&mut self.inner, cx)
            }

            fn call(&mut self, request: #tonic::codegen::http::Request<B>) -> Self::Future {
                #tonic::codegen::Service::call(&mut self.inner, request)
            }
        }
    }
}

/// The position of an event RPC among the service's event RPCs: its publisher's index.
pub(crate) fn event_index(service: &Service, method: &Method) -> usize {
    service
        .methods
        .iter()
        .filter(|m| matches!(m.shape, Shape::Event(_)))
        .position(|m| m.proto_name == method.proto_name)
        .unwrap_or(0)
}
