//! Generated protobuf messages and gRPC stubs for everything under `proto/`.
//!
//! Code is generated at build time by `protox` (pure Rust, no `protoc`) and
//! `tonic-prost-build`. Each protobuf package becomes a module here; the SPIFFE
//! Workload API, which has no package, lives in [`spiffe::workload`].

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The SPIFFE Workload API (`workload.proto`, no protobuf package): messages,
/// the `SpiffeWorkloadApi` server trait and a client.
pub mod spiffe {
    /// Messages and stubs of the `SpiffeWorkloadAPI` service.
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/_.rs"));
    }
}

/// Trustmesh's own packages, one module per `trustmesh.<service>.v1`.
pub mod trustmesh {
    /// The audit service (`trustmesh.audit.v1`).
    pub mod audit {
        /// Version 1 of the audit API.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/trustmesh.audit.v1.rs"));
        }
    }
    /// The auth service (`trustmesh.auth.v1`).
    pub mod auth {
        /// Version 1 of the auth API.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/trustmesh.auth.v1.rs"));
        }
    }
    /// The payment service (`trustmesh.payment.v1`).
    pub mod payment {
        /// Version 1 of the payment API.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/trustmesh.payment.v1.rs"));
        }
    }
    /// The user service (`trustmesh.user.v1`).
    pub mod user {
        /// Version 1 of the user API.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/trustmesh.user.v1.rs"));
        }
    }
    /// The wallet service (`trustmesh.wallet.v1`).
    pub mod wallet {
        /// Version 1 of the wallet API.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/trustmesh.wallet.v1.rs"));
        }
    }
}

/// The encoded `FileDescriptorSet` of every `.proto` in `proto/`: the policy
/// layer uses it to decode request messages into the policy input.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));
