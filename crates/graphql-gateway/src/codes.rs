//! `extensions.code` on the errors async-graphql raises itself, before any
//! resolver runs: a request that does not parse, does not validate against
//! the schema, or exceeds the depth or complexity limit. Resolver errors
//! carry their own codes ([`crate::upstream::error`]); with this, every
//! error the API returns has one, so a client can branch on the code
//! instead of matching message text.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{ServerError, ServerResult, ValidationResult, Variables};

/// The query text is not GraphQL.
pub const PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
/// The query does not fit the schema (unknown field, wrong argument type...).
pub const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
/// Nested deeper than the configured depth limit.
pub const TOO_DEEP: &str = "QUERY_TOO_DEEP";
/// Costs more than the configured complexity limit.
pub const TOO_COMPLEX: &str = "QUERY_TOO_COMPLEX";

pub struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

/// The code for a validation error async-graphql raised. Its limit errors
/// have fixed messages (async-graphql 7, `validation/mod.rs`).
fn validation_code(message: &str) -> &'static str {
    match message {
        "Query is nested too deep." => TOO_DEEP,
        "Query is too complex." => TOO_COMPLEX,
        _ => VALIDATION_FAILED,
    }
}

/// `e` with `extensions.code` set to `code`, unless it already has one.
pub(crate) fn with_code(mut e: ServerError, code: &'static str) -> ServerError {
    let ext = e.extensions.get_or_insert_with(Default::default);
    if ext.get("code").is_none() {
        ext.set("code", code);
    }
    e
}

#[async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables)
            .await
            .map_err(|e| with_code(e, PARSE_FAILED))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|e| {
                    let code = validation_code(&e.message);
                    with_code(e, code)
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};

    struct Query;

    #[Object]
    impl Query {
        async fn a(&self) -> Query {
            Query
        }
        async fn n(&self) -> i32 {
            1
        }
    }

    async fn code(query: &str) -> String {
        let schema = Schema::build(Query, EmptyMutation, EmptySubscription)
            .limit_depth(3)
            .limit_complexity(4)
            .extension(ErrorCodes)
            .finish();
        let r = schema.execute(query).await;
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        let v = serde_json::to_value(&r.errors[0]).unwrap();
        v["extensions"]["code"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn every_request_error_has_a_code() {
        assert_eq!(code("{ a { n }").await, PARSE_FAILED);
        assert_eq!(code("{ nope }").await, VALIDATION_FAILED);
        assert_eq!(code("{ a { a { a { n } } } }").await, TOO_DEEP);
        assert_eq!(code("{ a { n } b: a { n } c: n }").await, TOO_COMPLEX);
    }
}
