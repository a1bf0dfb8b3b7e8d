//! The Kafka APIs and versions this listener implements, and the ApiVersions answer built
//! from them. Advertise only what is implemented: clients pick the highest version both sides
//! know, so an advertised version must behave as Kafka's does at that version.
//!
//! Must not depend on: the shard API or sockets.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

/// One implemented API and its version range (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupportedApi {
    /// The API.
    pub key: ApiKey,
    /// Lowest version answered.
    pub min: i16,
    /// Highest version answered.
    pub max: i16,
}

const fn api(key: ApiKey, min: i16, max: i16) -> SupportedApi {
    SupportedApi { key, min, max }
}

/// Every API the listener answers, with the versions it implements. The minimums are those of
/// the `kafka-protocol` crate (Kafka 4's baseline); the maximums stop before versions whose
/// semantics Sluice does not have yet (Produce v12+ transactions v2, Fetch v17+ replica
/// directories, ListOffsets v7+ max-timestamp and tiered-storage specs).
pub const SUPPORTED_APIS: &[SupportedApi] = &[
    api(ApiKey::Produce, 3, 11),
    api(ApiKey::Fetch, 4, 16),
    api(ApiKey::ListOffsets, 1, 6),
    api(ApiKey::Metadata, 0, 12),
    api(ApiKey::FindCoordinator, 0, 4),
    api(ApiKey::ApiVersions, 0, 3),
    api(ApiKey::CreateTopics, 2, 7),
    api(ApiKey::DeleteTopics, 1, 6),
    api(ApiKey::DeleteRecords, 0, 2),
    api(ApiKey::OffsetForLeaderEpoch, 2, 4),
    api(ApiKey::DescribeConfigs, 1, 4),
    api(ApiKey::AlterConfigs, 0, 2),
    api(ApiKey::CreatePartitions, 0, 3),
    api(ApiKey::IncrementalAlterConfigs, 0, 1),
    api(ApiKey::DescribeCluster, 0, 1),
];

/// The implemented range of `key`, if the listener answers it at all.
pub fn supported(key: ApiKey) -> Option<SupportedApi> {
    SUPPORTED_APIS.iter().copied().find(|api| api.key == key)
}

/// True if `version` of `key` is implemented.
pub fn is_supported(key: ApiKey, version: i16) -> bool {
    supported(key).is_some_and(|api| (api.min..=api.max).contains(&version))
}

/// The ApiVersions answer: every supported API, and `error` (UNSUPPORTED_VERSION when the
/// client asked with a version we do not speak; the client then retries with one we list).
pub fn api_versions_response(error: Option<ResponseError>) -> ApiVersionsResponse {
    let api_keys = SUPPORTED_APIS
        .iter()
        .map(|api| {
            ApiVersion::default()
                .with_api_key(api.key as i16)
                .with_min_version(api.min)
                .with_max_version(api.max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error.map_or(0, |e| e.code()))
        .with_api_keys(api_keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: every advertised range lies inside what the kafka-protocol crate can decode and
    // encode, and no API is listed twice. Method: compare against ApiKey::valid_versions.
    #[test]
    fn advertised_ranges_are_codec_ranges() {
        for (i, api) in SUPPORTED_APIS.iter().enumerate() {
            let codec = api.key.valid_versions();
            assert!(api.min <= api.max, "{:?}", api.key);
            assert!(
                api.min >= codec.min && api.max <= codec.max,
                "{:?} beyond codec",
                api.key
            );
            assert!(
                SUPPORTED_APIS[i + 1..]
                    .iter()
                    .all(|other| other.key != api.key),
                "{:?} listed twice",
                api.key
            );
        }
        assert!(is_supported(ApiKey::ApiVersions, 0));
        assert!(is_supported(ApiKey::ApiVersions, 3));
        assert!(!is_supported(ApiKey::ApiVersions, 4));
        assert!(!is_supported(ApiKey::Produce, 2));
        assert!(!is_supported(ApiKey::JoinGroup, 0));
    }
}
