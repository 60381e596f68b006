//! Deferred delivery, driven over the shared state: `POST /v1/strait/deferred/messages`,
//! `GET` and `DELETE /v1/strait/deferred/{id}` ([`api`]) and the consumer that
//! delivers queued requests upstream once ([`worker`]). The queue and the store behind
//! their traits, and the 202 path itself, are [`crate::defer`]'s; docs/deferred.md
//! tells the whole story.

pub mod api;
pub mod worker;
