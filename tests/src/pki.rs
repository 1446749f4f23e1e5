//! A fleet CA and certificates made for one test run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::identity::{Identity, Principal, Role};
use fleet_proto::pki::{Ca, IssuedCert};
use fleet_proto::tls::{ClientTls, Expect};
use tonic::transport::Channel;

pub const FLEET: &str = "testlab";
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Paths of one identity's certificate and key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub issued: IssuedCert,
}

pub struct TestPki {
    pub dir: PathBuf,
    pub ca: Ca,
    pub ca_path: PathBuf,
}

impl TestPki {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = Ca::init(FLEET)?;
        let ca_path = dir.join("ca.pem");
        ca.write(&ca_path, &dir.join("ca.key"))?;
        Ok(TestPki {
            dir: dir.to_owned(),
            ca,
            ca_path,
        })
    }

    pub fn issue(&self, principal: Principal) -> anyhow::Result<CertFiles> {
        let issued = self.ca.issue(&principal, VALIDITY, &[])?;
        let stem = principal.to_string().replace('/', "-");
        let cert = self.dir.join(format!("{stem}.pem"));
        let key = self.dir.join(format!("{stem}.key"));
        issued.write(&cert, &key)?;
        Ok(CertFiles {
            ca: self.ca_path.clone(),
            cert,
            key,
            issued,
        })
    }

    pub fn agent(&self, node: &str) -> anyhow::Result<CertFiles> {
        self.issue(Principal::Agent { node: node.into() })
    }

    pub fn user(&self, name: &str, role: Role) -> anyhow::Result<CertFiles> {
        self.issue(Principal::User {
            name: name.into(),
            role,
        })
    }

    pub fn controller(&self) -> anyhow::Result<CertFiles> {
        self.issue(Principal::Controller)
    }

    /// Writes the fleet's CRL, revoking exactly `certs`, as `crl.pem` beside
    /// the CA (what `fleetctl pki revoke` writes), and returns its path.
    pub fn revoke(&self, certs: &[&CertFiles]) -> anyhow::Result<PathBuf> {
        let serials: Vec<_> = certs.iter().map(|c| c.issued.serial.clone()).collect();
        let path = self.crl_path();
        fleet_proto::pki::write_public_file(&path, &self.ca.revoke(&serials)?)?;
        Ok(path)
    }

    /// Where [`TestPki::revoke`] writes the CRL.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    pub fn identity(&self, principal: Principal) -> Identity {
        Identity::new(FLEET, principal).expect("valid identity")
    }
}

impl CertFiles {
    pub fn client(&self) -> anyhow::Result<ClientTls> {
        Ok(ClientTls::from_files(&self.ca, &self.cert, &self.key)?)
    }

    /// A channel to the agent of `node` at `addr`, as this identity.
    pub async fn connect_agent(
        &self,
        addr: std::net::SocketAddr,
        node: &str,
    ) -> anyhow::Result<Channel> {
        Ok(self
            .client()?
            .connect(addr, Expect::Agent(node.into()))
            .await?)
    }
}
