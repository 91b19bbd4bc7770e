//! Connecting: plain HTTP/2, TLS, or mTLS, with a bearer token on every
//! call.
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

use std::time::Duration;

use tonic::{
    metadata::AsciiMetadataValue,
    service::Interceptor,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

use crate::{Client, Error, RetryPolicy};

/// TLS settings: the CA that signed the server's certificate and, for
/// mTLS, the client's own certificate and key (PEM).
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// The CA to trust (`None`: the system's roots are not loaded, so give
    /// one for any private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate and key, for mTLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the server's certificate against (default: the
    /// endpoint's host).
    pub domain: Option<String>,
}

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct Builder {
    endpoint: String,
    token: Option<String>,
    tls: Option<Tls>,
    retry: RetryPolicy,
    connect_timeout: Duration,
}

impl Builder {
    pub(crate) fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            token: None,
            tls: None,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The bearer token every call carries.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Speak TLS (an `https://` endpoint).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Replace the default [`RetryPolicy`].
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long the first connection may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects. A lost connection later is re-established by the channel.
    pub async fn connect(self) -> Result<Client, Error> {
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::Config(format!("endpoint {:?}: {e}", self.endpoint)))?
            .connect_timeout(self.connect_timeout);
        if let Some(tls) = self.tls {
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = tls.ca_pem {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = tls.domain {
                config = config.domain_name(domain);
            }
            endpoint = endpoint.tls_config(config)?;
        }
        let bearer = match self.token {
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| Error::Config("the token is not ASCII".into()))?,
            ),
            None => None,
        };
        let channel = endpoint.connect().await?;
        Ok(Client::new(channel, Bearer(bearer), self.retry))
    }
}

/// Adds `authorization: Bearer …` to every call. `Debug` never shows it.
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
