//! Which signature scheme authenticated the peer of a handshake.
//!
//! quinn exposes neither the rustls connection nor the peer's
//! CertificateVerify, so, as [`kx`](crate::kx) does for the key exchange,
//! each connection's certificate verifier is wrapped in one that writes the
//! scheme of the handshake signature it accepted into a [`Slot`] the
//! connection holds. Verifiers are `Arc`s (not `'static` like key-exchange
//! groups), so a slot is simply shared, never pooled.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// Where one handshake's verifier writes the peer's signature scheme.
#[derive(Debug, Default)]
pub struct Slot {
    verified: Mutex<Option<SignatureScheme>>,
}

impl Slot {
    /// The scheme of the peer's handshake signature, once it verified.
    pub fn verified(&self) -> Option<SignatureScheme> {
        *self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(
        &self,
        outcome: Result<HandshakeSignatureValid, Error>,
        scheme: SignatureScheme,
    ) -> Result<HandshakeSignatureValid, Error> {
        if outcome.is_ok() {
            *self.verified.lock().unwrap_or_else(PoisonError::into_inner) = Some(scheme);
        }
        outcome
    }
}

/// The metric label of a signature scheme (a closed set: cardinality stays
/// bounded whatever a peer offers).
pub fn scheme_name(scheme: SignatureScheme) -> &'static str {
    match scheme {
        SignatureScheme::ML_DSA_44 => "ML_DSA_44",
        SignatureScheme::ML_DSA_65 => "ML_DSA_65",
        SignatureScheme::ML_DSA_87 => "ML_DSA_87",
        SignatureScheme::ECDSA_NISTP256_SHA256 => "ECDSA_NISTP256_SHA256",
        SignatureScheme::ECDSA_NISTP384_SHA384 => "ECDSA_NISTP384_SHA384",
        SignatureScheme::ED25519 => "ED25519",
        SignatureScheme::RSA_PSS_SHA256
        | SignatureScheme::RSA_PSS_SHA384
        | SignatureScheme::RSA_PSS_SHA512 => "RSA_PSS",
        _ => "other",
    }
}

/// A server-certificate verifier that records the scheme it accepted.
#[derive(Debug)]
pub struct RecordingServerVerifier<V> {
    inner: V,
    slot: Arc<Slot>,
}

impl<V> RecordingServerVerifier<V> {
    /// Wraps `inner`, recording into `slot`.
    pub fn new(inner: V, slot: Arc<Slot>) -> Self {
        Self { inner, slot }
    }
}

impl<V: ServerCertVerifier> ServerCertVerifier for RecordingServerVerifier<V> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let outcome = self.inner.verify_tls13_signature(message, cert, dss);
        self.slot.record(outcome, dss.scheme)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// A client-certificate verifier that records the scheme it accepted; the
/// verifier itself is shared (built once per trust bundle), the slot is the
/// connection's.
#[derive(Debug)]
pub struct RecordingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    slot: Arc<Slot>,
}

impl RecordingClientVerifier {
    /// Wraps `inner`, recording into `slot`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, slot: Arc<Slot>) -> Self {
        Self { inner, slot }
    }
}

impl ClientCertVerifier for RecordingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let outcome = self.inner.verify_tls13_signature(message, cert, dss);
        self.slot.record(outcome, dss.scheme)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}
