//! The detector kinds: one file each, built from a detector file by [`build`].

mod buckets;
mod new_domain;
mod rate_spike;
mod round_the_clock;
mod secret_reads;
#[cfg(test)]
pub(crate) mod testing;
mod token_region;
mod unregistered;

use super::Detector;
use super::spec::{DetectorSpec, Kind, SpecError};

/// Builds one shard's instance of the detector a file describes.
/// `max_identities` caps the identities its state may hold.
pub fn build(spec: &DetectorSpec, max_identities: usize) -> Result<Box<dyn Detector>, SpecError> {
    match spec.kind {
        Kind::RateSpike => rate_spike::build(spec, max_identities),
        Kind::SecretReads => secret_reads::build(spec, max_identities),
        Kind::Unregistered => unregistered::build(spec, max_identities),
        Kind::NewDomain => new_domain::build(spec, max_identities),
        Kind::TokenRegion => token_region::build(spec, max_identities),
        Kind::RoundTheClock => round_the_clock::build(spec, max_identities),
    }
}
