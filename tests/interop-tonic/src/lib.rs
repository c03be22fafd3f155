//! The Echo proto as meshless generates it (`meshless_stubs`) and as plain tonic-build does
//! (`plain`), in one crate that also depends on tonic and prost directly.

pub mod meshless_stubs {
    meshless::include_protos!();
}

pub mod plain {
    include!(concat!(env!("OUT_DIR"), "/plain/_plain.rs"));
}
