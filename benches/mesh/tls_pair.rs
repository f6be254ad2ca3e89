//! The fourth path: a TLS-over-TCP proxy pair from a well-kept
//! implementation (Debian's stunnel4), the shape of Linkerd's and ztunnel's
//! hop: client → stunnel (client mode) → TLS 1.3 with mutual authentication,
//! X25519, AES-256-GCM over TCP → stunnel (server mode) → server. Both
//! certificates come from a throwaway ECDSA P-256 CA, as Phoenix's do.
//!
//! It is classical (Debian 12's stunnel links OpenSSL 3.0, which has no
//! ML-KEM): the comparison is of the hop's cost, PQ key exchange aside.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

use super::Side;
use super::child::Child;

/// The stunnel binary, when installed.
pub fn stunnel() -> Option<PathBuf> {
    ["/usr/bin/stunnel4", "/usr/bin/stunnel"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A running stunnel pair.
pub struct TlsPair {
    pub client: Child,
    pub server: Child,
    /// Where the bench's client connects (the client-mode stunnel).
    pub entry: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TlsPair {
    /// Starts the pair: the client side in `a`, the server side in `b`,
    /// forwarding to `target`.
    pub fn start(
        program: &Path,
        a: &Side,
        b: &Side,
        localhost: std::net::IpAddr,
        target: SocketAddr,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        pki(dir.path())?;
        // stunnel does not report the ports it bound: pick free ones (from
        // the bench's namespace; in a fresh namespace every port is free).
        let entry = SocketAddr::new(localhost, free_port()?);
        let hop = SocketAddr::new(b.ip, free_port()?);
        let common = "foreground = yes\npid =\nsyslog = no\ndebug = 3\n\
                      sslVersionMin = TLSv1.3\nciphersuites = TLS_AES_256_GCM_SHA384\ncurves = X25519\n\
                      socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n";
        let server_conf = format!(
            "{common}[hop]\naccept = {hop}\nconnect = {target}\n\
             cert = {d}/server.pem\nkey = {d}/server.key\nCAfile = {d}/ca.pem\nverifyChain = yes\nrequireCert = yes\n",
            d = dir.path().display()
        );
        let client_conf = format!(
            "{common}[entry]\nclient = yes\naccept = {entry}\nconnect = {hop}\n\
             cert = {d}/client.pem\nkey = {d}/client.key\nCAfile = {d}/ca.pem\nverifyChain = yes\ncheckHost = server.bench\n",
            d = dir.path().display()
        );
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        };
        let server_path = write("server.conf", &server_conf)?;
        let client_path = write("client.conf", &client_conf)?;
        let server = Child::spawn(
            "stunnel server",
            b.netns.as_deref(),
            program,
            &[server_path.into_os_string()],
            &[],
        )?;
        let client = Child::spawn(
            "stunnel client",
            a.netns.as_deref(),
            program,
            &[client_path.into_os_string()],
            &[],
        )?;
        Ok(Self {
            client,
            server,
            entry,
            _dir: dir,
        })
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes a CA and two leaves (`server.bench`, `client.bench`) into `dir`.
fn pki(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let now = SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(vec![])?;
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Phoenix bench TLS pair CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = (now - day).into();
    ca.not_after = (now + day).into();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key)?.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for name in ["server", "client"] {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut leaf = CertificateParams::new(vec![format!("{name}.bench")])?;
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name}.bench"));
        leaf.use_authority_key_identifier_extension = true;
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf.not_before = (now - day).into();
        leaf.not_after = (now + day).into();
        std::fs::write(
            dir.join(format!("{name}.pem")),
            leaf.signed_by(&key, &issuer)?.pem(),
        )?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}
