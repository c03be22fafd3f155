//! The prost-build `ServiceGenerator` that writes, per service, tonic's stubs (with their paths
//! pointed at `meshless`'s re-exports) followed by meshless's own handler, service and client.

use std::collections::BTreeSet;
use std::rc::Rc;

use proc_macro2::{Literal, TokenStream};
use quote::quote;

use crate::compile::Compiled;
use crate::model::{Service, Shape};
use crate::{client, events, rewrite, server};

pub(crate) struct Generator {
    tonic: Box<dyn prost_build::ServiceGenerator>,
    compiled: Rc<Compiled>,
    build_client: bool,
    build_server: bool,
    /// Packages whose module already holds `FILE_DESCRIPTOR_SET`.
    packages_with_descriptors: BTreeSet<String>,
    /// Where the generated code finds the encoded descriptor set, written once per build.
    descriptor_set: DescriptorSetPath,
}

/// The path `include_bytes!` takes to the build's encoded descriptor set.
pub(crate) enum DescriptorSetPath {
    /// A file in `OUT_DIR`, named so.
    InOutDir(String),
    /// A file beside the generated code (an explicit output directory), named so.
    BesideCode(String),
}

impl Generator {
    pub(crate) fn new(
        tonic: Box<dyn prost_build::ServiceGenerator>,
        compiled: Rc<Compiled>,
        build_client: bool,
        build_server: bool,
        descriptor_set: DescriptorSetPath,
    ) -> Self {
        Self {
            tonic,
            compiled,
            build_client,
            build_server,
            packages_with_descriptors: BTreeSet::new(),
            descriptor_set,
        }
    }
}

impl prost_build::ServiceGenerator for Generator {
    fn generate(&mut self, mut service: prost_build::Service, buf: &mut String) {
        let model = Service::new(&self.compiled, &service);

        // Event streams carry `Envelope`s: encoded once on the way out, event plus metadata on
        // the way in. tonic's stubs live one module down, hence `super::`.
        for (method, modeled) in service.methods.iter_mut().zip(&model.methods) {
            if matches!(modeled.shape, Shape::Event(_)) {
                let event = &method.output_type;
                let event = if event.starts_with("::") || event.starts_with("crate::") {
                    event.clone()
                } else {
                    format!("super::{event}")
                };
                method.output_type = format!("::meshless::events::Envelope<{event}>");
            }
        }

        let mut tonic_code = String::new();
        self.tonic.generate(service, &mut tonic_code);
        // tonic's own output is prettyplease-formatted Rust, so it always tokenizes.
        let tonic_tokens: TokenStream = tonic_code
            .parse()
            .unwrap_or_else(|e| panic!("meshless-build: tonic-build output does not parse: {e}"));
        let tonic_tokens = rewrite::tonic_paths(tonic_tokens);

        let handler = self.build_server.then(|| server::generate(&model));
        let publisher =
            (self.build_server && model.has_events()).then(|| events::publisher(&model));
        let client = self.build_client.then(|| client::generate(&model));
        let observer = (self.build_client && model.has_events()).then(|| events::observer(&model));
        let tokens = quote! {
            #tonic_tokens
            #handler
            #publisher
            #client
            #observer
        };
        buf.push_str(&tokens.to_string());
        buf.push('\n');
    }

    fn finalize(&mut self, buf: &mut String) {
        self.tonic.finalize(buf);
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.tonic.finalize_package(package, buf);
        if (self.build_server || self.build_client)
            && self.packages_with_descriptors.insert(package.to_owned())
        {
            let bytes = match &self.descriptor_set {
                DescriptorSetPath::InOutDir(name) => {
                    let name = Literal::string(&format!("/{name}"));
                    quote! { ::core::include_bytes!(::core::concat!(::core::env!("OUT_DIR"), #name)) }
                }
                DescriptorSetPath::BesideCode(name) => {
                    let name = Literal::string(name);
                    quote! { ::core::include_bytes!(#name) }
                }
            };
            let tokens = quote! {
                /// The encoded `FileDescriptorSet` of the `.proto` files this package was
                /// generated from, and their imports: served by gRPC server reflection, and
                /// what observers' filters are checked against. One file per build, shared by
                /// its packages.
                pub const FILE_DESCRIPTOR_SET: &[u8] = #bytes;
            };
            buf.push_str(&tokens.to_string());
            buf.push('\n');
        }
    }
}
