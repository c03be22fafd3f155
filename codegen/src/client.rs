//! Generates `{Service}Client`, the typed client of a service's request-response RPCs.
//!
//! It wraps tonic's generated client over a `meshless::Channel`, so a target string is all it
//! takes to reach every instance of a service, and its methods take `&self`: the client is
//! cheap to clone and share between tasks.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::docs;
use crate::model::{Service, Shape};
use crate::server::rust_type;

pub(crate) fn generate(service: &Service) -> TokenStream {
    let client = format_ident!("{}Client", service.proto_name);
    let tonic_module = format_ident!("{}", service.tonic_client_module);
    let tonic_client = format_ident!("{}Client", service.proto_name);
    let full_name = &service.full_name;
    let mut our_docs = vec![
        format!("A client of the gRPC service `{full_name}`."),
        String::new(),
        "Build it from a target with [`Self::connect`] (`dns:///users.example:50051`,".to_owned(),
        "`ipv4:10.0.0.1:50051,10.0.0.2:50051`, `http://127.0.0.1:50051`, ...). Calls are spread"
            .to_owned(),
        "over the target's instances. Clones are cheap and share the connections.".to_owned(),
    ];
    if service.has_events() {
        our_docs.push(String::new());
        our_docs
            .push("Event RPCs are not methods of this client: observe them instead.".to_owned());
    }
    let doc = docs::with_proto_comments(
        &service.docs,
        &our_docs.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let methods = service.methods.iter().map(|method| {
        let name = format_ident!("{}", method.name);
        let input = rust_type(&method.input_type);
        let output = rust_type(&method.output_type);
        let doc = docs::lines(&method.docs);
        let deprecated = method
            .deprecated
            .then(|| quote! { #[deprecated] #[allow(deprecated)] });
        // Requests of known size are checked before they are sent: tonic would abort the
        // HTTP/2 stream mid-way, which reaches the caller as a transport error.
        let idempotent = method.idempotent;
        let (single_request, single_response) = match &method.shape {
            Shape::Unary => (true, true),
            Shape::ServerStreaming => (true, false),
            Shape::ClientStreaming => (false, true),
            _ => (false, false),
        };
        let routing = crate::events::key_path(method);
        let call = quote! {
            ::meshless::codegen::Call {
                single_request: #single_request,
                single_response: #single_response,
                idempotent: #idempotent,
                routing: #routing,
            }
        };
        let routing_header = match &method.key {
            Some(_) => quote! {
                if let ::core::option::Option::Some(path) = #routing {
                    ::meshless::codegen::add_routing_key(&mut request, path);
                }
            },
            None => quote! {},
        };
        let check_size = match &method.shape {
            Shape::Unary | Shape::ServerStreaming => quote! {
                let mut request = ::meshless::IntoRequest::into_request(request);
                ::meshless::codegen::check_request_size(request.get_ref(), self.max_request_size)?;
                #routing_header
                request.extensions_mut().insert(#call);
            },
            _ => quote! {
                let mut request = ::meshless::IntoStreamingRequest::into_streaming_request(request);
                request.extensions_mut().insert(#call);
            },
        };
        let (request, response) = match &method.shape {
            Shape::Event(_) => return quote! {},
            Shape::Unary => (
                quote! { impl ::meshless::IntoRequest<#input> },
                quote! { #output },
            ),
            Shape::ServerStreaming => (
                quote! { impl ::meshless::IntoRequest<#input> },
                quote! { ::meshless::Streaming<#output> },
            ),
            Shape::ClientStreaming => (
                quote! { impl ::meshless::IntoStreamingRequest<Message = #input> },
                quote! { #output },
            ),
            Shape::Streaming => (
                quote! { impl ::meshless::IntoStreamingRequest<Message = #input> },
                quote! { ::meshless::Streaming<#output> },
            ),
        };
        quote! {
            #doc
            #deprecated
            pub async fn #name(
                &self,
                request: #request,
            ) -> ::core::result::Result<::meshless::Response<#response>, ::meshless::Status> {
                #check_size
                ::meshless::codegen::limit_status(self.inner.clone().#name(request).await)
            }
        }
    });

    quote! {
        #doc
        #[derive(Debug, Clone)]
        pub struct #client {
            inner: #tonic_module::#tonic_client<::meshless::Channel>,
            max_request_size: usize,
        }

        #[allow(dead_code)]
        impl #client {
            /// The gRPC name of the service this client calls.
            pub const SERVICE_NAME: &'static str = #full_name;

            /// Connects to `target` with the default channel settings.
            ///
            /// The target is parsed and its instances are looked up before this returns;
            /// connections are made as calls need them. See [`meshless::Channel`] for the
            /// accepted targets and for settings.
            pub async fn connect(target: impl ::core::convert::AsRef<str>) -> ::core::result::Result<Self, ::meshless::Error> {
                ::meshless::Channel::connect(target.as_ref()).await.map(Self::new)
            }

            /// A client that calls through `channel`.
            pub fn new(channel: ::meshless::Channel) -> Self {
                Self::from_tonic(#tonic_module::#tonic_client::new(channel))
            }

            /// A client that calls through a tonic client already set up (compression,
            /// message size limits, ...).
            /// Its request size limit is set to 4 MiB; set another with
            /// [`max_encoding_message_size`](Self::max_encoding_message_size).
            pub fn from_tonic(inner: #tonic_module::#tonic_client<::meshless::Channel>) -> Self {
                Self {
                    inner: inner.max_encoding_message_size(::meshless::DEFAULT_MAX_MESSAGE_SIZE),
                    max_request_size: ::meshless::DEFAULT_MAX_MESSAGE_SIZE,
                }
            }

            /// The underlying tonic client, for what this client does not expose.
            pub fn into_tonic(self) -> #tonic_module::#tonic_client<::meshless::Channel> {
                self.inner
            }

            /// Limits the size of a decoded response message (default: 4 MiB).
            #[must_use]
            pub fn max_decoding_message_size(self, limit: usize) -> Self {
                Self { inner: self.inner.max_decoding_message_size(limit), ..self }
            }

            /// Limits the size of an encoded request message (default: 4 MiB).
            #[must_use]
            pub fn max_encoding_message_size(self, limit: usize) -> Self {
                Self { inner: self.inner.max_encoding_message_size(limit), max_request_size: limit }
            }

            #(#methods)*
        }
    }
}
