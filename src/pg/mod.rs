//! The PostgreSQL layer: opening a dedicated connection, running pglock's statements on it,
//! watching it, cancelling it from another thread, and describing its errors. Nothing here knows
//! about keys, semaphores or the command; every statement's text comes from [`sql`].

pub mod cancel;
pub mod classify;
pub mod connect;
pub mod deadline;
pub mod error;
pub mod link;
pub mod opener;
pub mod session;
pub mod sql;

pub use cancel::Canceller;
pub use error::describe_error;
pub use opener::Opener;
pub use session::Session;
