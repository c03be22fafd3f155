//! Points tonic-build's output at `meshless`'s re-exports.
//!
//! tonic-build writes paths such as `tonic::codegen::*` and `tonic::Status`, which resolve
//! only in crates that depend on tonic themselves. meshless users depend on `meshless` alone,
//! so every path that starts with `tonic::` becomes `::meshless::codegen::tonic::`: the
//! generated code then always uses the tonic that `meshless` was built with.

use proc_macro2::{Group, Ident, Punct, Spacing, Span, TokenStream, TokenTree};

/// Rewrites every path whose first segment is `tonic` to go through `::meshless::codegen`.
pub(crate) fn tonic_paths(tokens: TokenStream) -> TokenStream {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut out = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        match token {
            TokenTree::Group(group) => {
                let mut rewritten = Group::new(group.delimiter(), tonic_paths(group.stream()));
                rewritten.set_span(group.span());
                out.push(TokenTree::Group(rewritten));
            }
            TokenTree::Ident(ident)
                if ident == "tonic"
                    && starts_path(&tokens[i + 1..])
                    && !follows_path(&tokens[..i]) =>
            {
                out.extend(path_prefix(ident.span()));
                out.push(token.clone());
            }
            _ => out.push(token.clone()),
        }
    }
    out.into_iter().collect()
}

/// Whether the tokens start with `::`.
fn starts_path(rest: &[TokenTree]) -> bool {
    matches!(rest, [TokenTree::Punct(a), TokenTree::Punct(b), ..] if a.as_char() == ':' && b.as_char() == ':')
}

/// Whether the tokens end with `::`, so the next identifier is not a path's first segment.
fn follows_path(before: &[TokenTree]) -> bool {
    // A lone `:` (as in `request: tonic::Request`) does not count: only `::`.
    matches!(
        before,
        [.., TokenTree::Punct(a), TokenTree::Punct(b)]
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
    )
}

/// `::meshless::codegen::`
fn path_prefix(span: Span) -> Vec<TokenTree> {
    let mut tokens = Vec::with_capacity(9);
    for segment in ["meshless", "codegen"] {
        tokens.extend(colons());
        tokens.push(TokenTree::Ident(Ident::new(segment, span)));
    }
    tokens.extend(colons());
    tokens
}

fn colons() -> [TokenTree; 2] {
    [
        TokenTree::Punct(Punct::new(':', Spacing::Joint)),
        TokenTree::Punct(Punct::new(':', Spacing::Alone)),
    ]
}

#[cfg(test)]
mod test {
    use super::*;

    fn rewrite(code: &str) -> String {
        tonic_paths(code.parse().unwrap()).to_string()
    }

    #[test]
    fn rewrites_leading_tonic_segments() {
        assert_eq!(
            rewrite("use tonic::codegen::*; fn f(r: tonic::Request<X>) {}"),
            "use :: meshless :: codegen :: tonic :: codegen ::*; \
             fn f (r : :: meshless :: codegen :: tonic :: Request < X >) { }"
        );
    }

    #[test]
    fn leaves_other_paths_alone() {
        assert_eq!(
            rewrite("a::tonic::X; tonic_prost::Y; tonic"),
            "a :: tonic :: X ; tonic_prost :: Y ; tonic"
        );
    }
}
