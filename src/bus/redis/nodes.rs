//! Where herald's commands go: one pipelined connection for writes and one for reads on a
//! server or a Sentinels' master (a history read never waits behind a publishing batch), or
//! the master of each command's slot on a cluster.

use std::sync::Arc;
use std::time::Instant;

use super::address::Access;
use super::link::LinkError;
use super::pipelined::{Pipeline, Pipelined};
use super::resp::Value;
use super::topology::{Cluster, Command, reply};

pub enum Nodes {
    Single { writer: Box<Pipelined>, reader: Box<Pipelined> },
    Cluster(Arc<Cluster>),
}

/// Which connection a command goes on, on one server.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Write,
    Read,
}

impl Nodes {
    pub fn new(access: Access, cluster: bool) -> Self {
        if cluster {
            Nodes::Cluster(Arc::new(Cluster::new(access)))
        } else {
            Nodes::Single { writer: Box::new(Pipelined::new(access.clone(), None)), reader: Box::new(Pipelined::new(access, None)) }
        }
    }

    /// Each command's reply, in order (error replies as `Err`); fails whole if a connection did.
    pub async fn send(&self, commands: &[Command], lane: Lane) -> Result<Vec<Result<Value, String>>, LinkError> {
        match self {
            Nodes::Single { writer, reader } => {
                let mut pipeline = Pipeline::default();
                for c in commands {
                    pipeline.push(&c.args);
                }
                let connection = if lane == Lane::Read { reader } else { writer };
                Ok(connection.send(&pipeline).await?.into_iter().map(reply).collect())
            }
            Nodes::Cluster(cluster) => cluster.send(commands).await,
        }
    }

    /// Runs one command on the server, or on every master of a cluster.
    pub async fn everywhere(&self, args: &[&[u8]]) -> Result<(), LinkError> {
        match self {
            Nodes::Single { writer, .. } => {
                let mut pipeline = Pipeline::default();
                pipeline.push(args);
                match writer.send(&pipeline).await?.pop() {
                    Some(Value::Error(e)) => Err(LinkError::Refused(format!("Redis refused it: {}", String::from_utf8_lossy(&e)))),
                    _ => Ok(()),
                }
            }
            Nodes::Cluster(cluster) => cluster.each_master(args).await,
        }
    }

    /// When a connection was last made again after one was lost.
    pub fn reconnected_at(&self) -> Option<Instant> {
        match self {
            Nodes::Single { writer, reader } => writer.reconnected_at().max(reader.reconnected_at()),
            Nodes::Cluster(cluster) => cluster.reconnected_at(),
        }
    }
}
