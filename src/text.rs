//! Text for people: errors with their causes, and names from the network cut short. Shared by
//! the client, the server and the events, so that none of them imports another for it.

/// An error and its causes, as one line: tonic's transport errors say only "transport error"
/// at the top.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A name from the network, cut short for a status message (which travels as a header).
pub(crate) fn shown(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &name[..at]),
        None => name.to_owned(),
    }
}
