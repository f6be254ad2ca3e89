//! Gateway API v1.5.1 types: HTTPRoute, GRPCRoute and ReferenceGrant, for
//! the Kubernetes source's watches (GAMMA: routes parented to Services).
//!
//! Not written by hand: `scripts/gateway-api-types` generates them with
//! kopium 0.24.1 (the tool the kube-rs project's `gateway-api` crate is
//! made with; that crate binds kube 4, Phoenix uses kube 5) from the CRDs
//! vendored in `manifests/gateway-api/v1.5.1/` (Apache-2.0, as released).
//! They come from the experimental channel, a superset of the standard
//! one, so they read routes of either channel; a cluster with the standard
//! CRDs simply never has the experimental fields set.
//! `tests/gateway_types.rs` regenerates them and fails on any difference.

#![allow(missing_docs, non_camel_case_types, clippy::all, clippy::pedantic)]

pub mod grpcroutes;
pub mod httproutes;
pub mod referencegrants;

pub use grpcroutes::GrpcRoute;
pub use httproutes::HttpRoute;
pub use referencegrants::ReferenceGrant;
