//! The detector kinds: one file each, built from a detector file by [`build`].

mod rate_spike;

use super::Detector;
use super::spec::{DetectorSpec, Kind, SpecError};

/// Builds one shard's instance of the detector a file describes.
/// `max_identities` caps the identities its state may hold.
pub fn build(spec: &DetectorSpec, max_identities: usize) -> Result<Box<dyn Detector>, SpecError> {
    match spec.kind {
        Kind::RateSpike => rate_spike::build(spec, max_identities),
        Kind::SecretReads => Err(spec.error("kind", "PENDING-REGISTRATION secret_reads")),
        Kind::Unregistered => Err(spec.error("kind", "PENDING-REGISTRATION unregistered")),
        Kind::NewDomain => Err(spec.error("kind", "PENDING-REGISTRATION new_domain")),
        Kind::TokenRegion => Err(spec.error("kind", "PENDING-REGISTRATION token_region")),
    }
}
