//! Doc attributes for generated items, from `.proto` comments and our own text.

use proc_macro2::TokenStream;
use quote::quote;

/// `#[doc = "..."]` for each line.
pub(crate) fn lines<S: AsRef<str>>(lines: &[S]) -> TokenStream {
    let lines = lines.iter().map(|line| {
        let line = format!(" {}", line.as_ref());
        quote! { #[doc = #line] }
    });
    quote! { #(#lines)* }
}

/// The `.proto` comments, a blank doc line, then our own explanation.
pub(crate) fn with_proto_comments(proto: &[String], ours: &[&str]) -> TokenStream {
    let mut all: Vec<String> = proto.to_vec();
    if !all.is_empty() {
        all.push(String::new());
    }
    all.extend(ours.iter().map(|s| (*s).to_owned()));
    lines(&all)
}
