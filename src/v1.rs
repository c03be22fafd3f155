//! The wire messages of `meshless/v1/meshless.proto`: the event annotation's options, the
//! `Subscribe` request of event RPCs, cursors and event metadata.

#![allow(missing_docs, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/meshless.v1.rs"));
