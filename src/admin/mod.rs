//! What a process can tell about itself, to operators: gRPC channelz (`grpc.channelz.v1`) and
//! meshless's admin service (`meshless.admin.v1`), both opt-in on [`Server`](crate::Server).
//!
//! - [`v1`]: the admin service's wire messages, and its typed client (`AdminClient`), which
//!   the `meshless` command line reads every instance with.
//! - [`channelz_v1`]: channelz's wire messages and client.
//! - `registry`: the servers, connections and channels of the process, and their call counts,
//!   kept as they go (a few relaxed atomic additions per call).
//! - `channelz` and `status`: the two services, filled from the registry and the publishers.

pub(crate) mod channelz;
pub(crate) mod registry;
pub(crate) mod status;

pub mod v1 {
    //! The wire messages of `meshless/admin/v1/admin.proto`, and its client.
    #![allow(missing_docs, unreachable_pub)]

    include!(concat!(env!("OUT_DIR"), "/meshless.admin.v1.rs"));
}

pub mod channelz_v1 {
    //! The wire messages of gRPC channelz (`grpc.channelz.v1`, see `grpc/channelz/v1/channelz.proto`
    //! in this crate's `proto/`), and its client (`ChannelzClient`), to read any gRPC
    //! server's channelz from Rust.
    #![allow(missing_docs, unreachable_pub)]

    include!(concat!(env!("OUT_DIR"), "/grpc.channelz.v1.rs"));
}

/// The encoded descriptors of the admin service and channelz (one set for both), for
/// reflection and the server's metrics.
pub(crate) const ADMIN_DESCRIPTORS: &[u8] = v1::FILE_DESCRIPTOR_SET;
