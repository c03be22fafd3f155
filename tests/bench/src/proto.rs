//! The Echo service as meshless generates it, and as plain tonic-build does.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::all)]

pub mod mesh {
    meshless::include_protos!();
}

pub mod plain {
    include!(concat!(env!("OUT_DIR"), "/plain/_plain.rs"));
}
