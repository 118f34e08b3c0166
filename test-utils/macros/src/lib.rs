//! `#[msb_test]`: an async microsandbox test with its own state home.
//!
//! ```ignore
//! #[msb_test]
//! async fn boots(env: test_utils::sandbox::TestEnv) {
//!     // env.home(): an isolated MSB_HOME; env.isolation(): the backend the
//!     // KVM probe allows ("microvm" where guests can run, else "namespace")
//! }
//!
//! #[msb_test(microvm)]
//! async fn needs_a_guest(env: test_utils::sandbox::TestEnv) {
//!     // prints `skipped: <reason>` and returns where microVMs cannot run
//! }
//! ```
//!
//! The function is renamed and wrapped in a plain `#[test]` that builds the
//! [`TestEnv`](../test_utils/sandbox/struct.TestEnv.html), runs the body on a
//! multi-threaded tokio runtime and removes the state home afterwards.

use proc_macro::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};

/// See the crate docs.
#[proc_macro_attribute]
pub fn msb_test(attr: TokenStream, item: TokenStream) -> TokenStream {
    let requirement = match attr.to_string().trim() {
        "" => "Any",
        "microvm" => "Microvm",
        other => {
            return compile_error(&format!(
                "#[msb_test] takes nothing or `microvm`, not `{other}`"
            ));
        }
    };
    let tokens: Vec<TokenTree> = item.into_iter().collect();
    // Find `async fn NAME`.
    let Some(fn_at) = tokens.windows(2).position(|w| {
        matches!(&w[0], TokenTree::Ident(i) if i.to_string() == "fn")
            && matches!(&w[1], TokenTree::Ident(_))
    }) else {
        return compile_error("#[msb_test] goes on an `async fn`");
    };
    let is_async =
        fn_at > 0 && matches!(&tokens[fn_at - 1], TokenTree::Ident(i) if i.to_string() == "async");
    if !is_async {
        return compile_error("#[msb_test] needs an `async fn`");
    }
    let TokenTree::Ident(name) = &tokens[fn_at + 1] else {
        unreachable!("checked above");
    };
    let takes_env = tokens[fn_at + 2..]
        .iter()
        .find_map(|t| match t {
            TokenTree::Group(g) if g.delimiter() == Delimiter::Parenthesis => {
                Some(!g.stream().is_empty())
            }
            _ => None,
        })
        .unwrap_or(false);
    let inner = Ident::new(&format!("__msb_test_{name}"), Span::call_site());
    // Leading attributes (doc comments, #[ignore], ...) stay on the #[test].
    let attrs_end = tokens
        .iter()
        .position(|t| {
            !matches!(t, TokenTree::Punct(p) if p.as_char() == '#')
                && !matches!(t, TokenTree::Group(g) if g.delimiter() == Delimiter::Bracket)
        })
        .unwrap_or(0);
    let attrs: TokenStream = tokens[..attrs_end].iter().cloned().collect();
    let mut body: Vec<TokenTree> = tokens[attrs_end..].to_vec();
    body[fn_at + 1 - attrs_end] = TokenTree::Ident(inner.clone());
    let body: TokenStream = body.into_iter().collect();
    let call = if takes_env {
        format!("{inner}(env)")
    } else {
        format!("{{ let _ = &env; {inner}() }}")
    };
    let wrapper: TokenStream = format!(
        "#[test] fn {name}() {{ \
            let Some(env) = ::test_utils::sandbox::TestEnv::for_test(\
                \"{name}\", ::test_utils::sandbox::Requirement::{requirement}) else {{ return; }}; \
            ::test_utils::sandbox::run(env, |env| async move {{ {call}.await }}); \
        }}"
    )
    .parse()
    .expect("the wrapper parses");
    let mut out = attrs;
    out.extend(wrapper);
    out.extend(body);
    out
}

fn compile_error(message: &str) -> TokenStream {
    let mut out: TokenStream = "::core::compile_error!".parse().expect("parses");
    let literal: TokenStream = format!("{message:?}").parse().expect("a string literal");
    out.extend([TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        literal,
    ))]);
    out.extend(";".parse::<TokenStream>().expect("parses"));
    out
}
