//! One embedding API over a single host and a cluster: code written against
//! [`Invoker`] runs tools the same way on a [`Host`] in its own process and
//! on a [`ClusterClient`] whose replicas agree on every result.

use super::client::ClusterClient;
use super::wire::OpResult;
use crate::{Digest, Error, Host, Invocation, Receipt, Result};

/// What an embedder needs to run tools, wherever they run.
pub trait Invoker {
    /// Registers a component; returns its digest.
    fn add_tool(&self, wasm: &[u8], name: Option<&str>) -> Result<Digest>;
    /// The digest of a tool by name or digest.
    fn tool_digest(&self, reference: &str) -> Result<Digest>;
    /// Runs `template` (its `input` replaced by the digest of `input`) under
    /// the capability `token`. A denial is [`Error::Denied`] on a host and
    /// [`Error::Cluster`] naming the kind on a cluster.
    fn run_with_token(&self, token: &str, template: &Invocation, input: &[u8]) -> Result<Receipt>;
    /// The output of a receipt, if it has one.
    fn output(&self, receipt: &Receipt) -> Result<Option<Vec<u8>>>;
}

impl Invoker for Host {
    fn add_tool(&self, wasm: &[u8], name: Option<&str>) -> Result<Digest> {
        Host::add_tool(self, wasm, name).map(|t| t.digest)
    }

    fn tool_digest(&self, reference: &str) -> Result<Digest> {
        self.tool(reference).map(|t| t.digest)
    }

    fn run_with_token(&self, token: &str, template: &Invocation, input: &[u8]) -> Result<Receipt> {
        Host::run_with_token(self, token, template, input)
    }

    fn output(&self, receipt: &Receipt) -> Result<Option<Vec<u8>>> {
        Host::output(self, receipt)
    }
}

impl Invoker for ClusterClient {
    fn add_tool(&self, wasm: &[u8], name: Option<&str>) -> Result<Digest> {
        ClusterClient::add_tool(self, wasm, name, None).map(|t| t.digest)
    }

    fn tool_digest(&self, reference: &str) -> Result<Digest> {
        self.tool(reference).map(|t| t.digest)
    }

    fn run_with_token(&self, token: &str, template: &Invocation, input: &[u8]) -> Result<Receipt> {
        let signed = self.run(token, template, input)?;
        match signed.result {
            OpResult::Receipt { receipt, .. } => Ok(*receipt),
            OpResult::Denied { kind, message } => Err(Error::Cluster(format!(
                "denied ({kind}) by the cluster: {message}"
            ))),
            OpResult::Failed { message } => Err(Error::Cluster(message)),
        }
    }

    fn output(&self, receipt: &Receipt) -> Result<Option<Vec<u8>>> {
        match receipt.output {
            Some(d) => self.get_blob(&d).map(Some),
            None => Ok(None),
        }
    }
}
