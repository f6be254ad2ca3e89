//! The mesh certificate authority.
//!
//! The root lives in the state directory (`ca.crt`, and `ca.key` readable by
//! the owner only); it is generated there on first start, so a restart keeps
//! the same root and every proxy keeps trusting the control plane. Workload
//! certificates are issued from a CSR, but only the CSR's public key is used:
//! the identity comes from whoever proved it (a bootstrap token), never from
//! what the CSR asks for.
//!
//! A root is ECDSA P-256 or ML-DSA-65 (`identityAlgorithm`); leaves carry
//! whichever key their CSR proves, so a mesh migrating between the two
//! keeps working while proxies re-key ([`key`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use phoenix_api::SpiffeId;
use phoenix_api::tls_policy::{AuthPolicy, IdentityAlgorithm};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType, SerialNumber,
};

pub mod key;

pub use key::{CsrError, CsrKey, KeyError, RootKey};

/// File name of the root certificate in the state directory.
pub const ROOT_CERT_FILE: &str = "ca.crt";
/// File name of the root key in the state directory.
pub const ROOT_KEY_FILE: &str = "ca.key";
/// Lifetime of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why the CA cannot load or issue.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The state directory or a root file cannot be read or written.
    #[error("CA state in {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Only one of `ca.crt` and `ca.key` exists.
    #[error(
        "{dir} holds only one of ca.crt and ca.key; restore the other or remove both to generate a new root"
    )]
    HalfRoot {
        /// The state directory.
        dir: PathBuf,
    },
    /// The stored root cannot be parsed.
    #[error("stored root in {dir} is unusable")]
    BadRoot {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// The stored root key cannot be loaded.
    #[error("stored root key {}/ca.key is unusable; restore it from a backup", .dir.display())]
    BadRootKey {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: KeyError,
    },
    /// The CSR cannot be parsed or its signature is wrong.
    #[error("certificate signing request is invalid")]
    Csr(#[source] CsrError),
    /// The mesh authenticates with ML-DSA only and the CSR's key is classical.
    #[error(
        "the mesh's authPolicy is pq-only and the CSR's key is {algorithm}: request a certificate for an ml-dsa-65 key"
    )]
    ClassicalKey {
        /// The CSR key's algorithm.
        algorithm: IdentityAlgorithm,
    },
    /// Signing failed.
    #[error("cannot sign certificate")]
    Sign(#[source] rcgen::Error),
    /// The CSR asks for another identity than the one proven.
    #[error(
        "the certificate request asks for {requested} but the token proves {proven}; request no URI name or this one"
    )]
    IdentityMismatch {
        /// The URI the CSR names.
        requested: String,
        /// The identity the token proved.
        proven: SpiffeId,
    },
    /// A stored root (a Kubernetes Secret) cannot be parsed.
    #[error("the stored root certificate or key is unusable")]
    BadStoredRoot(#[source] rcgen::Error),
    /// A stored root key (file or Secret) cannot be loaded.
    #[error("the stored root key is unusable")]
    BadStoredKey(#[source] KeyError),
    /// A new root key cannot be made.
    #[error("cannot generate a root key")]
    Key(#[source] KeyError),
}

/// A loaded CA.
pub struct Ca {
    issuer: Issuer<'static, RootKey>,
    root_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Whether the root was found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOrigin {
    /// Loaded from the state directory.
    Loaded,
    /// Generated now and saved there.
    Generated,
}

impl Ca {
    /// Loads the root from `dir`, or generates one of `algorithm` there for
    /// `trust_domain` (a loaded root keeps its own algorithm).
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        algorithm: IdentityAlgorithm,
    ) -> Result<(Self, RootOrigin), CaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let root_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
                let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
                let bad = |source| CaError::BadRoot {
                    dir: dir.to_owned(),
                    source,
                };
                let ca = Self::from_pem(&root_pem, &key_pem).map_err(|e| match e {
                    CaError::BadStoredRoot(source) => bad(source),
                    CaError::BadStoredKey(source) => CaError::BadRootKey {
                        dir: dir.to_owned(),
                        source,
                    },
                    other => other,
                })?;
                Ok((ca, RootOrigin::Loaded))
            }
            (false, false) => {
                let ca = Self::generate_with(trust_domain, algorithm)?;
                let key_pem = ca.issuer.key().serialize_pem();
                write_private(&key_path, &key_pem).map_err(io(&key_path))?;
                std::fs::write(&cert_path, &ca.root_pem).map_err(io(&cert_path))?;
                Ok((ca, RootOrigin::Generated))
            }
            _ => Err(CaError::HalfRoot {
                dir: dir.to_owned(),
            }),
        }
    }

    /// A new in-memory ECDSA P-256 root (the default algorithm).
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        Self::generate_with(trust_domain, IdentityAlgorithm::default())
    }

    /// A new in-memory root of `algorithm` (tests, the first start, a rotation).
    pub fn generate_with(
        trust_domain: &str,
        algorithm: IdentityAlgorithm,
    ) -> Result<Self, CaError> {
        let key = RootKey::generate(algorithm).map_err(CaError::Key)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Phoenix");
        dn.push(
            DnType::CommonName,
            // A unique name per root: a certificate from another Phoenix root
            // is then an unknown issuer, not a bad signature from "our" root.
            format!(
                "Phoenix mesh root {trust_domain} {:08x}",
                rand::random::<u32>()
            ),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(CaError::Sign)?;
        let root_pem = cert.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            root_pem,
        })
    }

    /// The root's signature algorithm.
    pub fn algorithm(&self) -> IdentityAlgorithm {
        self.issuer.key().identity_algorithm()
    }

    /// The root certificate in PEM (the mesh trust anchor).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root's common name (unique per root): how logs name it.
    pub fn name(&self) -> String {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.root_pem.as_bytes())
            .ok()
            .and_then(|c| phoenix_tls::spiffe::common_name(&c, false))
            .unwrap_or_default()
    }

    /// A CA from a stored root certificate and key (PEM).
    pub fn from_pem(root_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = RootKey::from_pem(key_pem).map_err(CaError::BadStoredKey)?;
        let issuer = Issuer::from_ca_cert_pem(root_pem, key).map_err(CaError::BadStoredRoot)?;
        Ok(Self {
            issuer,
            root_pem: root_pem.to_owned(),
        })
    }

    /// The root key (PEM), to store it: never log it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a certificate for `identity` with the public key of `csr_pem`,
    /// once the CSR proves possession of it (its self-signature verifies).
    /// A CSR naming another SPIFFE ID is refused (the caller asked for what
    /// it cannot prove); everything else it asks for (DNS names, CA flag,
    /// usages) is ignored. Under `pq-only` a classical key is refused.
    pub fn issue(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        lifetime: Duration,
        auth: AuthPolicy,
    ) -> Result<String, CaError> {
        let csr = CsrKey::from_pem(csr_pem).map_err(CaError::Csr)?;
        if let Some(uri) = csr
            .requested_uris
            .iter()
            .find(|uri| **uri != identity.to_string())
        {
            return Err(CaError::IdentityMismatch {
                requested: uri.clone(),
                proven: identity.clone(),
            });
        }
        let algorithm = csr.identity_algorithm();
        if auth == AuthPolicy::PqOnly && !algorithm.is_post_quantum() {
            return Err(CaError::ClassicalKey { algorithm });
        }
        self.issue_for_key(&csr, identity, lifetime)
    }

    /// Signs a serving certificate for `identity` that also names `dns`
    /// (the admission webhook: the API server checks the DNS name, proxies
    /// and our own code the SPIFFE ID).
    pub fn issue_with_dns(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &SpiffeId,
        dns: &[String],
        lifetime: Duration,
    ) -> Result<String, CaError> {
        let mut params = self.leaf_params(identity, lifetime)?;
        for name in dns {
            let name = rcgen::string::Ia5String::try_from(name.as_str()).map_err(CaError::Sign)?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        Ok(cert.pem())
    }

    /// Signs a certificate for `identity` and `public_key`.
    pub fn issue_for_key(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<String, CaError> {
        let params = self.leaf_params(identity, lifetime)?;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        Ok(cert.pem())
    }

    fn leaf_params(
        &self,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri =
            rcgen::string::Ia5String::try_from(identity.to_string()).map_err(CaError::Sign)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        params.not_before = (now - backdate(lifetime)).into();
        params.not_after = (now + lifetime).into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// rcgen's signature algorithm for keys of `algorithm`.
pub fn signature_algorithm(algorithm: IdentityAlgorithm) -> &'static rcgen::SignatureAlgorithm {
    match algorithm {
        IdentityAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        IdentityAlgorithm::MlDsa65 => &rcgen::PKCS_ML_DSA_65,
    }
}

/// How far before issuance a leaf is valid from, so a peer whose clock is
/// behind the control plane's still accepts it: 5 minutes, as Kubernetes'
/// own CSR signer back-dates, for realistic lifetimes; a tenth of the
/// lifetime (at least 1 s) for short ones, so the renewal point (two thirds
/// of `notAfter - notBefore`) and the pool's drain point (nine tenths) stay
/// ahead of issuance.
fn backdate(lifetime: Duration) -> Duration {
    (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::KeyPair;

    fn csr_asking_for(san: &str, is_ca: bool) -> (KeyPair, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = if san.starts_with("spiffe://") {
            let mut p = CertificateParams::default();
            p.subject_alt_names = vec![SanType::URI(san.try_into().unwrap())];
            p
        } else {
            CertificateParams::new(vec![san.to_owned()]).unwrap()
        };
        if is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, pem)
    }

    #[test]
    fn identity_comes_from_the_caller_not_the_csr() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let ca = Ca::generate("phoenix.local").unwrap();
        let (_, csr) = csr_asking_for("admin.example.com", true);
        let id: SpiffeId = "spiffe://phoenix.local/ns/default/sa/web".parse().unwrap();
        let pem = ca
            .issue(&csr, &id, Duration::from_secs(60), AuthPolicy::Any)
            .unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(phoenix_tls::spiffe::spiffe_id(&der).unwrap(), id);
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            !san.value
                .general_names
                .iter()
                .any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(_))),
            "the CSR's DNS name must not be copied"
        );
        let ca_flag = cert
            .basic_constraints()
            .unwrap()
            .is_some_and(|b| b.value.ca);
        assert!(
            !ca_flag,
            "a CSR asking to be a CA must not get a CA certificate"
        );
    }

    #[test]
    fn leaves_are_back_dated_for_clock_skew_without_moving_renewal_before_issuance() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let ca = Ca::generate("phoenix.local").unwrap();
        let id: SpiffeId = "spiffe://phoenix.local/ns/default/sa/web".parse().unwrap();
        for (lifetime, want) in [(86_400, 300), (3_600, 300), (600, 60), (3, 1)] {
            let (_, csr) = csr_asking_for("web", false);
            let issued = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let pem = ca
                .issue(&csr, &id, Duration::from_secs(lifetime), AuthPolicy::Any)
                .unwrap();
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            let nb = phoenix_tls::spiffe::not_before_unix(&der).unwrap();
            let na = phoenix_tls::spiffe::not_after_unix(&der).unwrap();
            let back = issued - nb;
            assert!(
                (want - 1..=want + 1).contains(&back),
                "{lifetime}s: back-dated {back}s, want {want}s"
            );
            // The proxy renews at 2/3 of the span: after issuance.
            assert!(
                nb + (na - nb) * 2 / 3 > issued,
                "{lifetime}s: renewal before issuance"
            );
        }
    }

    #[test]
    fn root_survives_restart_and_half_roots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, origin) =
            Ca::load_or_create(dir.path(), "td", IdentityAlgorithm::EcdsaP256).unwrap();
        assert_eq!(origin, RootOrigin::Generated);
        let (b, origin) =
            Ca::load_or_create(dir.path(), "td", IdentityAlgorithm::EcdsaP256).unwrap();
        assert_eq!(origin, RootOrigin::Loaded);
        assert_eq!(a.root_pem(), b.root_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(ROOT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_file(dir.path().join(ROOT_KEY_FILE)).unwrap();
        assert!(matches!(
            Ca::load_or_create(dir.path(), "td", IdentityAlgorithm::EcdsaP256),
            Err(CaError::HalfRoot { .. })
        ));
    }

    #[test]
    fn a_csr_asking_for_another_identity_is_refused() {
        let ca = Ca::generate("td").unwrap();
        let id: SpiffeId = "spiffe://td/ns/shop/sa/web".parse().unwrap();
        let (_, csr) = csr_asking_for("spiffe://td/ns/shop/sa/admin", false);
        let e = ca
            .issue(&csr, &id, Duration::from_secs(60), AuthPolicy::Any)
            .unwrap_err();
        assert!(matches!(e, CaError::IdentityMismatch { .. }));
        assert!(e.to_string().contains("asks for spiffe://td/ns/shop/sa/admin but the token proves spiffe://td/ns/shop/sa/web"), "{e}");
        let (_, same) = csr_asking_for("spiffe://td/ns/shop/sa/web", false);
        assert!(
            ca.issue(&same, &id, Duration::from_secs(60), AuthPolicy::Any)
                .is_ok()
        );
        // Stored and reloaded (the Kubernetes Secret path) it signs the same.
        let again = Ca::from_pem(ca.root_pem(), &ca.key_pem()).unwrap();
        assert!(
            again
                .issue(&same, &id, Duration::from_secs(60), AuthPolicy::Any)
                .is_ok()
        );
        assert!(matches!(
            Ca::from_pem(ca.root_pem(), "junk"),
            Err(CaError::BadStoredKey(_))
        ));
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = Ca::generate("td").unwrap();
        let id: SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        assert!(matches!(
            ca.issue(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &id,
                Duration::from_secs(5),
                AuthPolicy::Any
            ),
            Err(CaError::Csr(_))
        ));
    }

    fn ml_dsa_csr(san: Option<&str>) -> (KeyPair, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ML_DSA_65).unwrap();
        let mut params = CertificateParams::default();
        if let Some(san) = san {
            params.subject_alt_names = vec![SanType::URI(san.try_into().unwrap())];
        }
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, pem)
    }

    /// Verifies `leaf_pem` against `root_pem` as a proxy does (rustls'
    /// WebPKI chain check with aws-lc-rs' algorithms, ML-DSA included).
    fn chain_verifies(
        leaf_pem: &str,
        root_pem: &str,
        auth: AuthPolicy,
    ) -> Result<(), rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, UnixTime};
        let roots = phoenix_tls::handshake::parse_roots(root_pem).unwrap();
        let der = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
        let cert = rustls::server::ParsedCertificate::try_from(&der)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            &[],
            UnixTime::now(),
            phoenix_tls::provider::verification_algorithms(auth).all,
        )
    }

    #[test]
    fn an_ml_dsa_root_issues_ml_dsa_leaves_that_verify_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::load_or_create(dir.path(), "td", IdentityAlgorithm::MlDsa65).unwrap();
        assert_eq!(ca.algorithm(), IdentityAlgorithm::MlDsa65);
        let id: SpiffeId = "spiffe://td/ns/shop/sa/web".parse().unwrap();
        let (_, csr) = ml_dsa_csr(Some("spiffe://td/ns/shop/sa/web"));
        let leaf = ca
            .issue(&csr, &id, Duration::from_secs(600), AuthPolicy::PqOnly)
            .unwrap();
        chain_verifies(&leaf, ca.root_pem(), AuthPolicy::PqOnly).unwrap();
        // An ML-DSA-65 leaf is several KB (key 1,952 B, signature 3,309 B).
        assert!(leaf.len() > 5_000, "{} bytes of PEM", leaf.len());
        // Restarted, the stored root (a key rcgen cannot load) still signs.
        let (again, origin) =
            Ca::load_or_create(dir.path(), "td", IdentityAlgorithm::EcdsaP256).unwrap();
        assert_eq!(origin, RootOrigin::Loaded);
        assert_eq!(again.algorithm(), IdentityAlgorithm::MlDsa65);
        let leaf = again
            .issue(&csr, &id, Duration::from_secs(600), AuthPolicy::Any)
            .unwrap();
        chain_verifies(&leaf, ca.root_pem(), AuthPolicy::PqOnly).unwrap();
        let from_secret = Ca::from_pem(ca.root_pem(), &ca.key_pem()).unwrap();
        assert_eq!(from_secret.algorithm(), IdentityAlgorithm::MlDsa65);
    }

    #[test]
    fn roots_and_leaves_of_either_algorithm_mix_while_a_mesh_migrates() {
        let id: SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let p256 = Ca::generate("td").unwrap();
        let ml_dsa = Ca::generate_with("td", IdentityAlgorithm::MlDsa65).unwrap();
        let (_, pq_csr) = ml_dsa_csr(None);
        let (_, classic_csr) = csr_asking_for("b", false);
        for (ca, csr, pq_chain) in [(&p256, &pq_csr, false), (&ml_dsa, &classic_csr, true)] {
            let leaf = ca
                .issue(csr, &id, Duration::from_secs(60), AuthPolicy::Any)
                .unwrap();
            chain_verifies(&leaf, ca.root_pem(), AuthPolicy::Any).unwrap();
            // A chain signed with ECDSA is refused under pq-only; a P-256
            // key under an ML-DSA root passes the chain check and is refused
            // at its handshake signature instead (tests/pq_identity.rs).
            assert_eq!(
                chain_verifies(&leaf, ca.root_pem(), AuthPolicy::PqOnly).is_ok(),
                pq_chain
            );
        }
    }

    #[test]
    fn pq_only_refuses_a_classical_csr_and_says_what_to_do() {
        let ca = Ca::generate_with("td", IdentityAlgorithm::MlDsa65).unwrap();
        let id: SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let (_, csr) = csr_asking_for("b", false);
        let e = ca
            .issue(&csr, &id, Duration::from_secs(60), AuthPolicy::PqOnly)
            .unwrap_err();
        assert!(matches!(e, CaError::ClassicalKey { .. }), "{e}");
        assert!(e.to_string().contains("ml-dsa-65"), "{e}");
    }

    #[test]
    fn an_ml_dsa_csr_must_prove_possession_of_its_key() {
        use rustls::pki_types::pem::PemObject;
        let ca = Ca::generate_with("td", IdentityAlgorithm::MlDsa65).unwrap();
        let id: SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let (_, csr) = ml_dsa_csr(None);
        let (_, der) =
            <(rustls::pki_types::pem::SectionKind, Vec<u8>)>::from_pem_slice(csr.as_bytes())
                .unwrap();
        // Flip one bit of the signature (the last bytes of the DER), and one
        // of the public key (inside the request info): both are refused.
        for at in [der.len() - 10, der.len() / 4] {
            let mut bad = der.clone();
            bad[at] ^= 0x01;
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bad));
            let e = ca
                .issue(&pem, &id, Duration::from_secs(60), AuthPolicy::Any)
                .unwrap_err();
            assert!(
                matches!(e, CaError::Csr(CsrError::BadSignature | CsrError::Parse)),
                "byte {at}: {e:?}"
            );
        }
        // Another key's signature over this key's request: refused too.
        let (other, _) = ml_dsa_csr(None);
        let (mine, _) = ml_dsa_csr(None);
        let params = CertificateParams::default();
        let good = params.serialize_request(&mine).unwrap();
        let theirs = params.serialize_request(&other).unwrap();
        let (g, t) = (good.der().to_vec(), theirs.der().to_vec());
        let sig_len = 3309;
        let mut spliced = g.clone();
        let n = spliced.len();
        spliced[n - sig_len..].copy_from_slice(&t[t.len() - sig_len..]);
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", spliced));
        assert!(matches!(
            ca.issue(&pem, &id, Duration::from_secs(60), AuthPolicy::Any),
            Err(CaError::Csr(CsrError::BadSignature))
        ));
    }

    #[test]
    fn a_tampered_ml_dsa_certificate_is_refused() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let ca = Ca::generate_with("td", IdentityAlgorithm::MlDsa65).unwrap();
        let id: SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let (_, csr) = ml_dsa_csr(None);
        let leaf = ca
            .issue(&csr, &id, Duration::from_secs(60), AuthPolicy::PqOnly)
            .unwrap();
        chain_verifies(&leaf, ca.root_pem(), AuthPolicy::PqOnly).unwrap();
        let der = CertificateDer::from_pem_slice(leaf.as_bytes())
            .unwrap()
            .to_vec();
        // One bit of the root's signature (the end of the DER), of the
        // subject's public key, and of the validity: each is refused.
        for at in [der.len() - 100, der.len() / 2, 60] {
            let mut bad = der.clone();
            bad[at] ^= 0x04;
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE", bad));
            assert!(
                chain_verifies(&pem, ca.root_pem(), AuthPolicy::PqOnly).is_err(),
                "byte {at} flipped and still verified"
            );
        }
        // And a leaf from another ML-DSA root with the same name is refused.
        let stranger = Ca::generate_with("td", IdentityAlgorithm::MlDsa65).unwrap();
        let theirs = stranger
            .issue(&csr, &id, Duration::from_secs(60), AuthPolicy::PqOnly)
            .unwrap();
        assert!(chain_verifies(&theirs, ca.root_pem(), AuthPolicy::PqOnly).is_err());
    }

    /// A genuine mesh certificate for a P-256 key (signed by the ML-DSA
    /// root) passes the chain check; its ECDSA handshake signature is then
    /// what `pq-only` refuses, in the verifier a proxy uses.
    #[test]
    fn pq_only_refuses_an_ecdsa_handshake_signature_from_a_genuine_certificate() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::internal::msgs::codec::{Codec, Reader};
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
        use rustls::{DigitallySignedStruct, SignatureScheme};
        let ca = Ca::generate_with("td", IdentityAlgorithm::MlDsa65).unwrap();
        let id: SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let (key, csr) = csr_asking_for("b", false);
        let leaf = ca
            .issue(&csr, &id, Duration::from_secs(60), AuthPolicy::Any)
            .unwrap();
        let cert = CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap();
        // The peer's CertificateVerify: its key signs the transcript.
        let message = b"TLS 1.3, server CertificateVerify transcript hash";
        let provider = phoenix_tls::provider::provider(Default::default(), &[]);
        let signing = provider
            .key_provider
            .load_private_key(
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let signer = signing
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        let sig = signer.sign(message).unwrap();
        let mut wire = Vec::new();
        SignatureScheme::ECDSA_NISTP256_SHA256.encode(&mut wire);
        wire.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        wire.extend_from_slice(&sig);
        let dss = DigitallySignedStruct::read(&mut Reader::init(&wire)).unwrap();
        let roots =
            std::sync::Arc::new(phoenix_tls::handshake::parse_roots(ca.root_pem()).unwrap());
        let verifier = |auth| {
            phoenix_tls::verify::SpiffeServerVerifier::new(
                roots.clone(),
                id.clone(),
                phoenix_tls::provider::verification_algorithms(auth),
            )
        };
        for auth in [AuthPolicy::Any, AuthPolicy::PqOnly] {
            let v = verifier(auth);
            let server_name = rustls::pki_types::ServerName::try_from("peer.phoenix").unwrap();
            v.verify_server_cert(&cert, &[], &server_name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{auth:?}: the chain is ML-DSA: {e}"));
            let outcome = v.verify_tls13_signature(message, &cert, &dss);
            assert_eq!(
                outcome.is_ok(),
                auth == AuthPolicy::Any,
                "{auth:?}: {outcome:?}"
            );
            assert!(
                !v.supported_verify_schemes()
                    .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
                    || auth == AuthPolicy::Any
            );
        }
    }

    #[test]
    fn a_corrupt_stored_key_is_refused_naming_the_file_and_both_attempts() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path(), "td", IdentityAlgorithm::MlDsa65).unwrap();
        let garbage = pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            vec![0x30, 0x03, 0x02, 0x01, 0x00],
        ));
        std::fs::remove_file(dir.path().join(ROOT_KEY_FILE)).unwrap();
        std::fs::write(dir.path().join(ROOT_KEY_FILE), garbage).unwrap();
        let e = Ca::load_or_create(dir.path(), "td", IdentityAlgorithm::MlDsa65).unwrap_err();
        assert!(matches!(e, CaError::BadRootKey { .. }), "{e:?}");
        assert!(
            e.to_string().contains("ca.key is unusable; restore it"),
            "{e}"
        );
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(
            cause.contains("neither ECDSA P-256") && cause.contains("ML-DSA-65"),
            "{cause}"
        );
    }
}
