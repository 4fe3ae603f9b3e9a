//! The OpenAPI 3.1 description of the REST API, served to anyone at
//! `GET /api/v1/openapi.json`.
//!
//! Each handler carries its own `#[utoipa::path]` annotation (route,
//! parameters, request body, the answers it gives) and its request and
//! answer types derive `ToSchema`; the router of [`super::routes`] is built
//! from those same annotations, so the document cannot list a route the
//! gateway does not serve, nor miss one it does. [`document`] then adds
//! what every route shares, from the same constants the request guard uses:
//!
//! - who may call: every route outside the guard's public list needs an
//!   access token, as `Authorization: Bearer` or in the `tm_access` cookie,
//!   and answers 401 without one and 403 when the policy refuses; any
//!   request that changes state and carries session cookies also sends the
//!   `tm_csrf` cookie's value in `x-csrf-token`, or gets 403;
//! - a route that takes a JSON body answers 400, 413 and 415 for a body
//!   that is not JSON, too large, or not declared as JSON, and one with a
//!   query string 400 for an unknown or mistyped parameter; any field or
//!   parameter whose value a service refuses is a 422;
//! - any other answer is an error in the shape of [`ErrorBody`].
//!
//! ```
//! let doc = trustmesh_gateway::api::openapi::document();
//! assert!(doc.paths.paths.contains_key("/api/v1/payments"));
//! ```

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::errors::{ApiError, ErrorBody, ErrorDetail};
use super::session::{ACCESS_COOKIE, CSRF_COOKIE, CSRF_HEADER, PUBLIC_ROUTES};

/// The name of the bearer-token security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer";
/// The name of the session-cookie security scheme in the document.
pub const COOKIE_SCHEME: &str = "cookie";

/// The parts of the document that are not any one route's.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Trustmesh REST API",
        description = "The REST edge of the Trustmesh mesh. JSON in and out; every error is \
            `{\"error\": {\"code\", \"message\"}}` with a stable snake_case `code`. Money is an \
            integer of minor units (cents), times are RFC 3339 in UTC, ids are UUIDs. Behind \
            the gateway each service verifies the caller's token and authorizes the call again.",
    ),
    tags(
        (name = "auth", description = "registration with TOTP, the two-step login, sessions, the JWKS"),
        (name = "users", description = "profiles, roles and teams"),
        (name = "wallet", description = "balances and history of the double-entry ledger"),
        (name = "payments", description = "payments between users; finance listing and rollbacks"),
        (name = "audit", description = "the tamper-evident audit log, read-only"),
        (name = "meta", description = "this document"),
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&SecuritySchemes),
)]
pub(crate) struct ApiDoc;

/// Adds the two ways to present an access token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "an access token from the login (EdDSA-signed JWT, 15 minutes)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            COOKIE_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                ACCESS_COOKIE.to_owned(),
                format!(
                    "a browser's session (HttpOnly cookie); a request that changes state \
                     also sends the `{CSRF_COOKIE}` cookie's value in the `{CSRF_HEADER}` header"
                ),
            ))),
        );
    }
}

/// The whole document: every route's description, completed with what
/// the routes share (module documentation).
pub fn document() -> Document {
    let mut doc = super::described_routes().into_openapi();
    for (path, item) in &mut doc.paths.paths {
        let public = PUBLIC_ROUTES.contains(&path.as_str());
        let operations = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
        ];
        for (operation, changes_state) in operations {
            if let Some(operation) = operation {
                complete(operation, public, changes_state);
            }
        }
    }
    doc
}

/// Adds to `operation` what its route shares with the others.
fn complete(operation: &mut Operation, public: bool, changes_state: bool) {
    if public && changes_state {
        add_error(
            operation,
            "403",
            "`csrf_required`: the request carries session cookies but not the CSRF header",
        );
    }
    if !public {
        operation.security = Some(vec![
            SecurityRequirement::new(BEARER_SCHEME, Vec::<String>::new()),
            SecurityRequirement::new(COOKIE_SCHEME, Vec::<String>::new()),
        ]);
        add_error(
            operation,
            "401",
            "`token_missing`, `token_expired`, `token_revoked`, …: no valid access token",
        );
        add_error(
            operation,
            "403",
            "refused by policy (`role_required`, `mfa_required`, …) or `csrf_required`",
        );
    }
    let has_parameter = |place: ParameterIn| {
        operation
            .parameters
            .iter()
            .flatten()
            .any(|parameter| matches!(parameter, RefOr::T(p) if p.parameter_in == place))
    };
    let (query, path) = (
        has_parameter(ParameterIn::Query),
        has_parameter(ParameterIn::Path),
    );
    if query {
        add_error(
            operation,
            "400",
            "`invalid_request`: an unknown query parameter, or one that is not of its type",
        );
    }
    if query || path || operation.request_body.is_some() {
        add_error(
            operation,
            "422",
            "`validation_failed` or the field's own code (`invalid_user_id`, …): \
             a field or parameter of the right type whose value is not valid",
        );
    }
    if operation.request_body.is_some() {
        add_error(
            operation,
            "400",
            "`invalid_json` or `invalid_request`: the body is not JSON or not of this shape",
        );
        add_error(
            operation,
            "413",
            "`payload_too_large`: the body exceeds 64 KiB",
        );
        add_error(
            operation,
            "415",
            "`unsupported_media_type`: the body is declared as something other than JSON",
        );
    }
    add_error(
        operation,
        "default",
        "an error: `error.code` says which (503 when a service behind the gateway is unavailable)",
    );
}

/// Adds an error answer with `status`; where the route describes its own
/// answer with that status, adds `description` to it.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    match operation.responses.responses.get_mut(status) {
        Some(RefOr::T(own)) => {
            own.description = format!("{}; or {description}", own.description);
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            let error_body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", error_body)
                .build();
            operation
                .responses
                .responses
                .insert(status.to_owned(), RefOr::T(response));
        }
    }
}

/// The document as served, made once.
static DOCUMENT: LazyLock<Result<String, String>> =
    LazyLock::new(|| document().to_pretty_json().map_err(|e| e.to_string()));

/// This API's OpenAPI 3.1 description
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "get_openapi",
    tag = "meta",
    responses((status = OK, description = "this document", content_type = "application/json", body = Object))
)]
pub(crate) async fn serve() -> Result<Response, ApiError> {
    match &*DOCUMENT {
        Ok(json) => Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=300"),
                ),
            ],
            json.as_str(),
        )
            .into_response()),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document could not be written");
            Err(ApiError::internal())
        }
    }
}
