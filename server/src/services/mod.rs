//! The gRPC services this server offers; each file is one service.

pub mod agent;
pub mod cluster;
pub mod kv;
pub mod object;
pub mod raft;
pub mod run;
pub mod secret;
pub mod token;
