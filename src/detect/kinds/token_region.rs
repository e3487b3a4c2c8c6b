//! `token_region`: tokens used away from where they were issued, credentials used
//! outside an app's allowed regions, and impossible travel.
//!
//! **Where an event is.** Its cloud region (`cloud_region`, e.g. CloudTrail's
//! `awsRegion`) when present; else its source country (`src_country`) when that is an
//! ISO 3166 alpha-2 code, or a common country name vendors write ("United States");
//! else its source address looked up in `params.cidr_regions` (longest prefix wins,
//! IPv4 and IPv6); else in the GeoIP database (`params.geoip_database`), reading the
//! country at `params.geoip_country_field` and, when the record has them, its
//! latitude and longitude. Anything else is "unknown" and never alerts.
//!
//! **Comparing regions.** Like with like: two cloud regions by name, two countries by
//! code; a cloud region and a country through the country the region is in (a table
//! of the AWS regions), and not at all when the table does not know the region.
//! Distances use the region's data-centre city or the country's centroid (small
//! tables below), or the GeoIP coordinates.
//!
//! **Findings** (at most one per event, first match wins):
//! - `region_mismatch`: a token issued (a `token_issuance` event with
//!   `issued_token_id`) in region A and then used (`token_id`) in region B ≠ A.
//!   Severity +1.
//! - `gateway_off_region`: an authenticated API-gateway request (its caller is a
//!   gateway consumer: Kong consumer, mesh peer identity) from a region where none
//!   of the identity's live tokens was issued. A gateway call names no token, so
//!   it is compared with all of them. Severity +1.
//! - `outside_allowed`: an event of a registered app from a region not in its
//!   `allowed_regions` (apps without the list are not checked).
//! - `impossible_travel`: a use after another located event of the identity, faster
//!   than `max_speed_kmh` over more than `min_distance_km`. Hops within one country
//!   are not compared (country centroids are too coarse for that).
//!
//! Tokens moving between two regions the app is allowed in, and travel between them,
//! do not alert unless `alert_within_allowed_regions` is set: multi-region apps run
//! in all of them at once.
//!
//! **State** per identity: the issued tokens (a hash of the id, issue time, region and
//! client address; capped and expired by event time) and the last located event.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use crate::detect::alert::{EventRef, Evidence, Finding, sql_str};
use crate::detect::spec::{DetectorSpec, SpecError};
use crate::detect::{Context, Detector, IdentityMap, StateStore};
use crate::event::{Category, IdentityStatus, NormalizedEvent, Outcome, PrincipalKind};
use crate::identity::App;

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

/// `[params]` of a `token_region` detector file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Issued tokens remembered per identity; when full, the oldest is forgotten first.
    #[serde(default = "default_max_tokens_per_identity")]
    max_tokens_per_identity: usize,
    /// A remembered token is forgotten this many seconds (event time) after its issue.
    #[serde(default = "default_token_ttl_secs")]
    token_ttl_secs: u64,
    /// Impossible travel: the speed (km/h) between two located events above which they alert.
    #[serde(default = "default_max_speed_kmh")]
    max_speed_kmh: f64,
    /// Impossible travel: events closer than this (km) never alert, whatever the speed.
    #[serde(default = "default_min_distance_km")]
    min_distance_km: f64,
    /// Whether a token moving between two of the app's allowed regions (or travel
    /// between them) alerts.
    #[serde(default)]
    alert_within_allowed_regions: bool,
    /// Source network (`address/prefix`) → region (cloud region or ISO country code),
    /// for events with neither a cloud region nor a country. The longest prefix wins.
    #[serde(default)]
    cidr_regions: BTreeMap<String, String>,
    /// MaxMind-format database (`.mmdb`) for the addresses `cidr_regions` does not cover.
    #[serde(default)]
    geoip_database: Option<PathBuf>,
    /// Dotted path of the ISO country code in a GeoIP record (`country.iso_code` for
    /// GeoIP2/GeoLite2, `country_code` for the flat @ip-location-db layout).
    #[serde(default = "default_geoip_country_field")]
    geoip_country_field: String,
}

fn default_max_tokens_per_identity() -> usize {
    64
}

fn default_token_ttl_secs() -> u64 {
    12 * 3600
}

fn default_max_speed_kmh() -> f64 {
    1000.0
}

fn default_min_distance_km() -> f64 {
    500.0
}

fn default_geoip_country_field() -> String {
    "country.iso_code".to_string()
}

/// The most tokens an identity may remember, whatever the file says.
const MAX_TOKENS_LIMIT: usize = 4096;

impl Params {
    fn validate(&self, spec: &DetectorSpec) -> Result<(), SpecError> {
        if !(1..=MAX_TOKENS_LIMIT).contains(&self.max_tokens_per_identity) {
            return Err(spec.error(
                "params.max_tokens_per_identity",
                format!("must be between 1 and {MAX_TOKENS_LIMIT}"),
            ));
        }
        if self.token_ttl_secs < 60 {
            return Err(spec.error("params.token_ttl_secs", "must be at least 60"));
        }
        spec.at_most_ten_years("params.token_ttl_secs", self.token_ttl_secs)?;
        if !(self.max_speed_kmh.is_finite() && self.max_speed_kmh > 0.0) {
            return Err(spec.error("params.max_speed_kmh", "must be a positive number"));
        }
        if !(self.min_distance_km.is_finite() && self.min_distance_km >= 0.0) {
            return Err(spec.error(
                "params.min_distance_km",
                "must be zero or a positive number",
            ));
        }
        if geoip_path(&self.geoip_country_field).is_none() {
            return Err(spec.error(
                "params.geoip_country_field",
                "must be a dotted path such as `country.iso_code` or `country_code`",
            ));
        }
        Ok(())
    }
}

/// Splits a dotted GeoIP field path; `None` when a segment is empty.
fn geoip_path(dotted: &str) -> Option<Vec<String>> {
    let segments: Vec<String> = dotted
        .trim()
        .split('.')
        .map(|s| s.trim().to_string())
        .collect();
    if segments.iter().any(String::is_empty) {
        return None;
    }
    Some(segments)
}

// ---------------------------------------------------------------------------
// Regions and places
// ---------------------------------------------------------------------------

/// Where an event came from: a cloud region (lower case) or an ISO country code
/// (upper case). Stored as its plain name; two upper-case letters are a country.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
enum Region {
    Cloud(String),
    Country(String),
}

impl From<String> for Region {
    fn from(name: String) -> Region {
        if name.len() == 2 && name.bytes().all(|b| b.is_ascii_uppercase()) {
            Region::Country(name)
        } else {
            Region::Cloud(name)
        }
    }
}

impl From<Region> for String {
    fn from(region: Region) -> String {
        match region {
            Region::Cloud(name) | Region::Country(name) => name,
        }
    }
}

impl Region {
    fn name(&self) -> &str {
        match self {
            Region::Cloud(name) | Region::Country(name) => name,
        }
    }

    /// A region as written in a registry or a CIDR map: a country code or name, else a cloud region.
    fn parse(text: &str) -> Option<Region> {
        if let Some(code) = country_code(text) {
            return Some(Region::Country(code));
        }
        cloud_region(text).map(Region::Cloud)
    }

    /// The country the region is in, when known.
    fn country(&self) -> Option<&str> {
        match self {
            Region::Country(code) => Some(code),
            Region::Cloud(name) => cloud_info(name).map(|&(_, country, _, _)| country),
        }
    }

    /// The region's coordinates: a cloud region's city, a country's centroid.
    fn coords(&self) -> Option<(f64, f64)> {
        match self {
            Region::Cloud(name) => cloud_info(name).map(|&(_, _, lat, lon)| (lat, lon)),
            Region::Country(code) => country_info(code).map(|&(_, lat, lon, _)| (lat, lon)),
        }
    }

    /// "ap-southeast-2 (AU)" for cloud regions whose country is known, else the name.
    fn describe(&self) -> String {
        match (self, self.country()) {
            (Region::Cloud(name), Some(country)) => format!("{name} ({country})"),
            _ => self.name().to_string(),
        }
    }

    /// Whether two regions differ, comparing like with like; `None` when they cannot be compared.
    fn differs(&self, other: &Region) -> Option<bool> {
        match (self, other) {
            (Region::Cloud(a), Region::Cloud(b)) | (Region::Country(a), Region::Country(b)) => {
                Some(a != b)
            }
            (Region::Cloud(_), Region::Country(c)) => self.country().map(|own| own != c),
            (Region::Country(c), Region::Cloud(_)) => other.country().map(|own| own != c),
        }
    }
}

/// Whether `region` is one of the app's allowed regions; `None` when that cannot be told
/// (no list, or a cloud region the table does not place in a country while the list
/// names countries).
fn allowed_in(app: &App, region: &Region) -> Option<bool> {
    if app.allowed_regions.is_empty() {
        return None;
    }
    let allowed: Vec<Region> = app
        .allowed_regions
        .iter()
        .filter_map(|r| Region::parse(r))
        .collect();
    if allowed.contains(region) {
        return Some(true);
    }
    match region {
        Region::Cloud(_) => match region.country() {
            Some(country) => Some(
                allowed
                    .iter()
                    .any(|a| matches!(a, Region::Country(c) if c == country)),
            ),
            None if allowed.iter().any(|a| matches!(a, Region::Country(_))) => None,
            None => Some(false),
        },
        Region::Country(code) => {
            let mut unknown = false;
            for a in &allowed {
                if let Region::Cloud(_) = a {
                    match a.country() {
                        Some(c) if c == code => return Some(true),
                        Some(_) => {}
                        None => unknown = true,
                    }
                }
            }
            if unknown { None } else { Some(false) }
        }
    }
}

/// A cloud region name: trimmed, lower case, letters, digits and dashes only.
fn cloud_region(text: &str) -> Option<String> {
    let name = text.trim().to_ascii_lowercase();
    let valid = name.len() >= 3
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some(name)
}

/// An ISO 3166 alpha-2 code from a code in any case or a common country name.
fn country_code(text: &str) -> Option<String> {
    let text = text.trim();
    if text.len() == 2 && text.bytes().all(|b| b.is_ascii_alphabetic()) {
        let code = text.to_ascii_uppercase();
        // User-assigned / placeholder codes vendors write for "unknown".
        return (!matches!(code.as_str(), "XX" | "ZZ" | "AA" | "QM" | "EU" | "AP")).then_some(code);
    }
    let lower = text.to_lowercase();
    let lower = lower.strip_prefix("the ").unwrap_or(&lower);
    COUNTRIES
        .iter()
        .find(|(_, _, _, names)| names.contains(&lower))
        .map(|(code, _, _, _)| code.to_string())
}

fn cloud_info(name: &str) -> Option<&'static (&'static str, &'static str, f64, f64)> {
    CLOUD_REGIONS.iter().find(|(n, _, _, _)| *n == name)
}

fn country_info(code: &str) -> Option<&'static (&'static str, f64, f64, &'static [&'static str])> {
    COUNTRIES.iter().find(|(c, _, _, _)| *c == code)
}

/// AWS regions: (name, country, latitude, longitude of the region's city).
const CLOUD_REGIONS: &[(&str, &str, f64, f64)] = &[
    ("us-east-1", "US", 38.95, -77.45),
    ("us-east-2", "US", 39.96, -83.0),
    ("us-west-1", "US", 37.35, -121.96),
    ("us-west-2", "US", 45.84, -119.7),
    ("us-gov-east-1", "US", 39.96, -83.0),
    ("us-gov-west-1", "US", 45.84, -119.7),
    ("ca-central-1", "CA", 45.5, -73.57),
    ("ca-west-1", "CA", 51.05, -114.07),
    ("mx-central-1", "MX", 20.59, -100.39),
    ("sa-east-1", "BR", -23.55, -46.63),
    ("eu-west-1", "IE", 53.35, -6.26),
    ("eu-west-2", "GB", 51.51, -0.13),
    ("eu-west-3", "FR", 48.86, 2.35),
    ("eu-central-1", "DE", 50.11, 8.68),
    ("eu-central-2", "CH", 47.38, 8.54),
    ("eu-north-1", "SE", 59.33, 18.07),
    ("eu-south-1", "IT", 45.46, 9.19),
    ("eu-south-2", "ES", 41.65, -0.88),
    ("il-central-1", "IL", 32.09, 34.78),
    ("me-south-1", "BH", 26.23, 50.59),
    ("me-central-1", "AE", 25.2, 55.27),
    ("af-south-1", "ZA", -33.92, 18.42),
    ("ap-east-1", "HK", 22.32, 114.17),
    ("ap-east-2", "TW", 25.03, 121.57),
    ("ap-south-1", "IN", 19.08, 72.88),
    ("ap-south-2", "IN", 17.39, 78.49),
    ("ap-southeast-1", "SG", 1.35, 103.82),
    ("ap-southeast-2", "AU", -33.87, 151.21),
    ("ap-southeast-3", "ID", -6.21, 106.85),
    ("ap-southeast-4", "AU", -37.81, 144.96),
    ("ap-southeast-5", "MY", 3.139, 101.69),
    ("ap-southeast-6", "NZ", -36.85, 174.76),
    ("ap-southeast-7", "TH", 13.76, 100.5),
    ("ap-northeast-1", "JP", 35.68, 139.69),
    ("ap-northeast-2", "KR", 37.57, 126.98),
    ("ap-northeast-3", "JP", 34.69, 135.5),
    ("cn-north-1", "CN", 39.9, 116.41),
    ("cn-northwest-1", "CN", 37.5, 105.19),
];

/// Countries: (ISO code, centroid latitude, longitude, lower-case names vendors write).
const COUNTRIES: &[(&str, f64, f64, &[&str])] = &[
    (
        "US",
        39.83,
        -98.58,
        &["united states", "united states of america", "usa"],
    ),
    ("CA", 56.13, -106.35, &["canada"]),
    ("MX", 23.63, -102.55, &["mexico"]),
    ("BR", -14.24, -51.93, &["brazil", "brasil"]),
    ("AR", -38.42, -63.62, &["argentina"]),
    ("CL", -35.68, -71.54, &["chile"]),
    ("CO", 4.57, -74.3, &["colombia"]),
    ("GB", 54.0, -2.0, &["united kingdom", "great britain", "uk"]),
    ("IE", 53.41, -8.24, &["ireland"]),
    ("FR", 46.23, 2.21, &["france"]),
    ("DE", 51.17, 10.45, &["germany", "deutschland"]),
    ("NL", 52.13, 5.29, &["netherlands", "holland"]),
    ("BE", 50.5, 4.47, &["belgium"]),
    ("LU", 49.82, 6.13, &["luxembourg"]),
    ("CH", 46.82, 8.23, &["switzerland"]),
    ("AT", 47.52, 14.55, &["austria"]),
    ("IT", 41.87, 12.57, &["italy"]),
    ("ES", 40.46, -3.75, &["spain"]),
    ("PT", 39.4, -8.22, &["portugal"]),
    ("SE", 60.13, 18.64, &["sweden"]),
    ("NO", 60.47, 8.47, &["norway"]),
    ("DK", 56.26, 9.5, &["denmark"]),
    ("FI", 61.92, 25.75, &["finland"]),
    ("PL", 51.92, 19.15, &["poland"]),
    ("CZ", 49.82, 15.47, &["czechia", "czech republic"]),
    ("RO", 45.94, 24.97, &["romania"]),
    ("HU", 47.16, 19.5, &["hungary"]),
    ("GR", 39.07, 21.82, &["greece"]),
    ("TR", 38.96, 35.24, &["turkey", "türkiye", "turkiye"]),
    ("UA", 48.38, 31.17, &["ukraine"]),
    ("RU", 61.52, 105.32, &["russia", "russian federation"]),
    ("IL", 31.05, 34.85, &["israel"]),
    ("AE", 23.42, 53.85, &["united arab emirates"]),
    ("SA", 23.89, 45.08, &["saudi arabia"]),
    ("BH", 26.07, 50.56, &["bahrain"]),
    ("ZA", -30.56, 22.94, &["south africa"]),
    ("NG", 9.08, 8.68, &["nigeria"]),
    ("EG", 26.82, 30.8, &["egypt"]),
    ("KE", 0.02, 37.91, &["kenya"]),
    ("IN", 20.59, 78.96, &["india"]),
    ("CN", 35.86, 104.2, &["china"]),
    ("HK", 22.32, 114.17, &["hong kong"]),
    ("TW", 23.7, 120.96, &["taiwan"]),
    ("JP", 36.2, 138.25, &["japan"]),
    (
        "KR",
        35.91,
        127.77,
        &["south korea", "korea, republic of", "republic of korea"],
    ),
    ("SG", 1.35, 103.82, &["singapore"]),
    ("MY", 4.21, 101.98, &["malaysia"]),
    ("ID", -0.79, 113.92, &["indonesia"]),
    ("TH", 15.87, 100.99, &["thailand"]),
    ("VN", 14.06, 108.28, &["vietnam", "viet nam"]),
    ("PH", 12.88, 121.77, &["philippines"]),
    ("AU", -25.27, 133.78, &["australia"]),
    ("NZ", -40.9, 174.89, &["new zealand"]),
];

/// How an event's region was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    CloudRegion,
    SrcCountry,
    CidrRegions,
    Geoip,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::CloudRegion => "cloud_region",
            Source::SrcCountry => "src_country",
            Source::CidrRegions => "cidr_regions",
            Source::Geoip => "geoip",
        }
    }
}

/// An event's location.
#[derive(Debug, Clone, PartialEq)]
struct Place {
    region: Region,
    /// GeoIP coordinates, else the region's from the tables.
    coords: Option<(f64, f64)>,
    source: Source,
}

/// Great-circle distance in km.
fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

// ---------------------------------------------------------------------------
// CIDR map and GeoIP
// ---------------------------------------------------------------------------

/// One `cidr_regions` entry, as a 128-bit network (IPv4 in the low 32 bits of its own table).
#[derive(Debug, Clone)]
struct Net {
    bits: u128,
    len: u8,
    region: Region,
}

fn mask(len: u8, width: u8) -> u128 {
    if len == 0 {
        0
    } else {
        (u128::MAX << (128 - u32::from(len))) >> (128 - u32::from(width))
    }
}

/// `address/prefix`, or a bare address (a single host), → (address, prefix length).
fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let text = text.trim();
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => width,
        Some(l) => match l.trim().parse::<u8>() {
            Ok(l) if l <= width => l,
            _ => return Err(format!("the prefix length must be between 0 and {width}")),
        },
    };
    Ok((addr, len))
}

fn ip_bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// A shared, read-only GeoIP reader.
type GeoReader = maxminddb::Reader<Vec<u8>>;

/// Readers already open, by path and file stamp (modified time, length).
type GeoCache = Mutex<HashMap<(PathBuf, Option<SystemTime>, u64), Weak<GeoReader>>>;

/// The readers every shard and detector share; a reader is dropped with its last user.
fn geoip_cache() -> &'static GeoCache {
    static CACHE: OnceLock<GeoCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Opens a GeoIP database, or shares the reader another shard opened.
fn open_geoip(path: &Path) -> Result<Arc<GeoReader>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let key = (path.to_path_buf(), meta.modified().ok(), meta.len());
    let mut cache = match geoip_cache().lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(reader) = cache.get(&key).and_then(Weak::upgrade) {
        return Ok(reader);
    }
    let reader = maxminddb::Reader::open_readfile(path)
        .map_err(|e| format!("{} is not a MaxMind-format database: {e}", path.display()))?;
    let reader = Arc::new(reader);
    cache.retain(|_, weak| weak.strong_count() > 0);
    cache.insert(key, Arc::downgrade(&reader));
    Ok(reader)
}

struct Geoip {
    reader: Arc<GeoReader>,
    country_path: Vec<String>,
}

impl Geoip {
    /// Country code and, when the record has them, coordinates.
    fn lookup(&self, addr: IpAddr) -> Option<(String, Option<(f64, f64)>)> {
        let result = self.reader.lookup(addr).ok()?;
        if !result.has_data() {
            return None;
        }
        let path: Vec<maxminddb::PathElement<'_>> = self
            .country_path
            .iter()
            .map(|s| match s.parse::<usize>() {
                Ok(i) => maxminddb::PathElement::Index(i),
                Err(_) => maxminddb::PathElement::Key(s),
            })
            .collect();
        let country: String = result.decode_path(&path).ok()??;
        let code = country_code(&country)?;
        let coord = |keys: &[&[&str]]| -> Option<f64> {
            keys.iter().find_map(|key| {
                let path: Vec<maxminddb::PathElement<'_>> =
                    key.iter().map(|k| maxminddb::PathElement::Key(k)).collect();
                result.decode_path::<f64>(&path).ok().flatten()
            })
        };
        let lat = coord(&[&["location", "latitude"], &["latitude"]]);
        let lon = coord(&[&["location", "longitude"], &["longitude"]]);
        let coords = match (lat, lon) {
            (Some(lat), Some(lon)) if lat.abs() <= 90.0 && lon.abs() <= 180.0 => Some((lat, lon)),
            _ => None,
        };
        Some((code, coords))
    }
}

/// Finds an event's region (see the module documentation for the order).
struct Locator {
    v4: Vec<Net>,
    v6: Vec<Net>,
    geoip: Option<Geoip>,
}

impl Locator {
    fn new(params: &Params, spec: &DetectorSpec) -> Result<Locator, SpecError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (cidr, region) in &params.cidr_regions {
            let key = format!("params.cidr_regions.\"{cidr}\"");
            let (addr, len) = parse_cidr(cidr).map_err(|m| spec.error(&key, m))?;
            let (bits, width) = ip_bits(addr);
            let network = bits & mask(len, width);
            if network != bits {
                let suggestion = match addr {
                    IpAddr::V4(_) => IpAddr::V4((network as u32).into()),
                    IpAddr::V6(_) => IpAddr::V6(network.into()),
                };
                return Err(spec.error(
                    &key,
                    format!("host bits are set; did you mean `{suggestion}/{len}`?"),
                ));
            }
            let region = Region::parse(region).ok_or_else(|| {
                spec.error(
                    &key,
                    format!("`{region}` is neither a cloud region (like eu-central-1) nor an ISO country code (like DE)"),
                )
            })?;
            let net = Net {
                bits: network,
                len,
                region,
            };
            if width == 32 {
                v4.push(net)
            } else {
                v6.push(net)
            }
        }
        // Longest prefix first; ties keep the map's (sorted) order.
        v4.sort_by_key(|net| Reverse(net.len));
        v6.sort_by_key(|net| Reverse(net.len));
        let geoip = match &params.geoip_database {
            None => None,
            Some(path) => {
                let reader =
                    open_geoip(path).map_err(|m| spec.error("params.geoip_database", m))?;
                let country_path = geoip_path(&params.geoip_country_field).ok_or_else(|| {
                    spec.error("params.geoip_country_field", "must be a dotted path")
                })?;
                Some(Geoip {
                    reader,
                    country_path,
                })
            }
        };
        Ok(Locator { v4, v6, geoip })
    }

    fn cidr(&self, addr: IpAddr) -> Option<&Region> {
        let (bits, width) = ip_bits(addr);
        let table = if width == 32 { &self.v4 } else { &self.v6 };
        table
            .iter()
            .find(|net| bits & mask(net.len, width) == net.bits)
            .map(|net| &net.region)
    }

    fn locate(&self, event: &NormalizedEvent) -> Option<Place> {
        let place = |region: Region, coords: Option<(f64, f64)>, source| {
            let coords = coords.or_else(|| region.coords());
            Some(Place {
                region,
                coords,
                source,
            })
        };
        if let Some(name) = event.cloud_region.as_deref().and_then(cloud_region) {
            return place(Region::Cloud(name), None, Source::CloudRegion);
        }
        if let Some(code) = event.src_country.as_deref().and_then(country_code) {
            return place(Region::Country(code), None, Source::SrcCountry);
        }
        let addr = src_addr(event)?;
        if let Some(region) = self.cidr(addr) {
            return place(region.clone(), None, Source::CidrRegions);
        }
        let (code, coords) = self.geoip.as_ref()?.lookup(addr)?;
        place(Region::Country(code), coords, Source::Geoip)
    }
}

/// The event's source address, IPv4-mapped IPv6 addresses as IPv4.
fn src_addr(event: &NormalizedEvent) -> Option<IpAddr> {
    let text = event.src_ip.as_deref()?.trim();
    text.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// A token the identity was issued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Issued {
    /// FNV-1a hash of the token id (the id itself is in the event that uses it).
    h: u64,
    /// Issue time.
    t: DateTime<Utc>,
    /// Issue region.
    r: Region,
    /// The client address that obtained it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
}

/// The identity's last located event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Seen {
    t: DateTime<Utc>,
    r: Region,
    /// Latitude, longitude.
    at: (f64, f64),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
    ev: EventRef,
}

/// Per-identity state.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// Issued tokens, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    tokens: VecDeque<Issued>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<Seen>,
}

/// FNV-1a over the token id: stable across releases, so snapshots stay valid.
fn token_hash(token: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in token.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

// ---------------------------------------------------------------------------
// The detector
// ---------------------------------------------------------------------------

struct TokenRegion {
    params: Params,
    locator: Arc<Locator>,
    map: IdentityMap<State>,
}

/// Builds one shard's instance.
pub fn build(spec: &DetectorSpec, max_identities: usize) -> Result<Box<dyn Detector>, SpecError> {
    let params: Params = spec.params()?;
    params.validate(spec)?;
    let locator = Arc::new(Locator::new(&params, spec)?);
    Ok(Box::new(TokenRegion {
        params,
        locator,
        map: IdentityMap::new(max_identities),
    }))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A long token id (Vault accessors are 76 characters) shortened for a summary.
fn short(token: &str) -> String {
    let mut chars = token.chars();
    let head: String = chars.by_ref().take(24).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// The end of a finding's window: just after the event, as investigation windows are half-open.
fn window_end(t: DateTime<Utc>) -> DateTime<Utc> {
    t + Duration::milliseconds(1)
}

fn token_filter(token: &str) -> String {
    let quoted = sql_str(token);
    format!("(token_id = {quoted} OR issued_token_id = {quoted})")
}

/// The issue event as a sample: state keeps only its time, not the vendor record's id.
fn issue_ref(issued: &Issued) -> EventRef {
    EventRef {
        time: issued.t,
        activity: Category::TokenIssuance.as_str().to_string(),
        vendor_event_id: None,
        origin: None,
    }
}

/// The exemption and the finding builders.
impl Params {
    /// Whether both regions are among the app's allowed regions (and that exempts them).
    fn exempt(&self, app: Option<&App>, a: &Region, b: &Region) -> bool {
        !self.alert_within_allowed_regions
            && app.is_some_and(|app| {
                allowed_in(app, a) == Some(true) && allowed_in(app, b) == Some(true)
            })
    }

    fn region_mismatch(
        &self,
        event: &NormalizedEvent,
        who: &Who<'_>,
        token: &str,
        issued: &Issued,
        place: &Place,
    ) -> Finding {
        let distance = issued
            .r
            .coords()
            .zip(place.coords)
            .map(|(a, b)| distance_km(a, b));
        let score = 80.0 + distance.map_or(0.0, |d| 20.0 * (d / 10_000.0).min(1.0));
        let mut details = Map::new();
        details.insert("token_id".into(), json!(token));
        details.insert("issued_at".into(), json!(issued.t));
        details.insert("issued_region".into(), json!(issued.r.name()));
        details.insert("issue_ip".into(), json!(issued.ip.map(|ip| ip.to_string())));
        details.insert("src_ip".into(), json!(event.src_ip));
        details.insert("observed_country".into(), json!(place.region.country()));
        details.insert("issued_country".into(), json!(issued.r.country()));
        details.insert("region_source".into(), json!(place.source.as_str()));
        if let Some(d) = distance {
            details.insert("distance_km".into(), json!(d.round()));
        }
        let away = distance.map_or(String::new(), |d| format!(", {d:.0} km away"));
        Finding {
            identity: who.key.to_string(),
            app_id: who.app_id(),
            score,
            window_start: issued.t.min(event.time),
            window_end: window_end(issued.t.max(event.time)),
            summary: format!(
                "{who} used token {} from {} at {}; it was issued in {} at {}{away}.",
                short(token),
                place.region.describe(),
                rfc3339(event.time),
                issued.r.describe(),
                rfc3339(issued.t),
            ),
            evidence: Evidence {
                observed: json!(place.region.name()),
                baseline: json!(issued.r.name()),
                details,
                samples: vec![issue_ref(issued), EventRef::of(event)],
            },
            sql_filter: token_filter(token),
            raise: 1,
            variant: "region_mismatch",
        }
    }

    /// A gateway call from a region where none of the identity's live tokens was issued.
    fn gateway_away_from_issuance(
        &self,
        event: &NormalizedEvent,
        who: &Who<'_>,
        latest: &Issued,
        place: &Place,
    ) -> Finding {
        let distance = latest
            .r
            .coords()
            .zip(place.coords)
            .map(|(a, b)| distance_km(a, b));
        let score = 75.0 + distance.map_or(0.0, |d| 20.0 * (d / 10_000.0).min(1.0));
        let mut details = Map::new();
        details.insert("issued_at".into(), json!(latest.t));
        details.insert("issued_region".into(), json!(latest.r.name()));
        details.insert("issue_ip".into(), json!(latest.ip.map(|ip| ip.to_string())));
        details.insert("src_ip".into(), json!(event.src_ip));
        details.insert("observed_country".into(), json!(place.region.country()));
        details.insert("region_source".into(), json!(place.source.as_str()));
        details.insert("dst_host".into(), json!(event.dst_host));
        if let Some(d) = distance {
            details.insert("distance_km".into(), json!(d.round()));
        }
        let away = distance.map_or(String::new(), |d| format!(", {d:.0} km away"));
        Finding {
            identity: who.key.to_string(),
            app_id: who.app_id(),
            score,
            window_start: latest.t.min(event.time),
            window_end: window_end(latest.t.max(event.time)),
            summary: format!(
                "{who} called through the API gateway ({} {}) from {} at {}; its live tokens were \
                 issued in {} (latest at {}){away}.",
                event.product.as_str(),
                event.activity,
                place.region.describe(),
                rfc3339(event.time),
                latest.r.describe(),
                rfc3339(latest.t),
            ),
            evidence: Evidence {
                observed: json!(place.region.name()),
                baseline: json!(latest.r.name()),
                details,
                samples: vec![issue_ref(latest), EventRef::of(event)],
            },
            sql_filter: format!(
                "category IN ({}, {})",
                sql_str(Category::TokenIssuance.as_str()),
                sql_str(Category::EgressRequest.as_str())
            ),
            raise: 1,
            variant: "gateway_off_region",
        }
    }

    fn outside_allowed(
        &self,
        event: &NormalizedEvent,
        who: &Who<'_>,
        app: &App,
        place: &Place,
    ) -> Finding {
        let nearest = place.coords.and_then(|here| {
            app.allowed_regions
                .iter()
                .filter_map(|r| Region::parse(r)?.coords())
                .map(|there| distance_km(here, there))
                .min_by(f64::total_cmp)
        });
        let score = 60.0 + nearest.map_or(0.0, |d| 20.0 * (d / 10_000.0).min(1.0));
        let mut details = Map::new();
        details.insert("token_id".into(), json!(event.token_id));
        details.insert("issued_token_id".into(), json!(event.issued_token_id));
        details.insert("src_ip".into(), json!(event.src_ip));
        details.insert("observed_country".into(), json!(place.region.country()));
        details.insert("region_source".into(), json!(place.source.as_str()));
        if let Some(d) = nearest {
            details.insert("nearest_allowed_km".into(), json!(d.round()));
        }
        let what = match (&event.issued_token_id, &event.token_id) {
            (Some(token), _) if event.category == Category::TokenIssuance => {
                format!("was issued token {}", short(token))
            }
            (_, Some(token)) => format!("used token {}", short(token)),
            _ => format!("was seen ({})", event.activity),
        };
        let sql_filter = match (&event.issued_token_id, &event.token_id) {
            (Some(token), _) | (None, Some(token)) => token_filter(token),
            _ => match (place.source, &event.src_ip) {
                (Source::CloudRegion, _) => {
                    format!("cloud_region = {}", sql_str(place.region.name()))
                }
                (_, Some(ip)) => format!("src_ip = {}", sql_str(ip)),
                _ => String::new(),
            },
        };
        Finding {
            identity: who.key.to_string(),
            app_id: who.app_id(),
            score,
            window_start: event.time,
            window_end: window_end(event.time),
            summary: format!(
                "{who} {what} from {} at {}, outside its allowed regions ({}).",
                place.region.describe(),
                rfc3339(event.time),
                app.allowed_regions.join(", "),
            ),
            evidence: Evidence {
                observed: json!(place.region.name()),
                baseline: json!(app.allowed_regions),
                details,
                samples: vec![EventRef::of(event)],
            },
            sql_filter,
            raise: 0,
            variant: "outside_allowed",
        }
    }

    /// The travel from the last located event to this one, when it is impossible.
    fn impossible_travel(
        &self,
        event: &NormalizedEvent,
        who: &Who<'_>,
        app: Option<&App>,
        last: &Seen,
        place: &Place,
        here: (f64, f64),
    ) -> Option<Finding> {
        if let (Some(a), Some(b)) = (last.r.country(), place.region.country())
            && a == b
        {
            return None;
        }
        if self.exempt(app, &last.r, &place.region) {
            return None;
        }
        let distance = distance_km(last.at, here);
        if distance <= self.min_distance_km {
            return None;
        }
        let elapsed_ms = (event.time - last.t)
            .num_milliseconds()
            .unsigned_abs()
            .max(1000);
        let hours = elapsed_ms as f64 / 3_600_000.0;
        let speed = distance / hours;
        if speed <= self.max_speed_kmh {
            return None;
        }
        let ratio = speed / self.max_speed_kmh;
        let score = 50.0 + 50.0 * ratio.log10().clamp(0.0, 1.0);
        let (first, second) = if last.t <= event.time {
            (last.ev.clone(), EventRef::of(event))
        } else {
            (EventRef::of(event), last.ev.clone())
        };
        let mut details = Map::new();
        details.insert("previous_region".into(), json!(last.r.name()));
        details.insert("previous_at".into(), json!(last.t));
        details.insert(
            "previous_ip".into(),
            json!(last.ip.map(|ip| ip.to_string())),
        );
        details.insert("src_ip".into(), json!(event.src_ip));
        details.insert("token_id".into(), json!(event.token_id));
        details.insert("region_source".into(), json!(place.source.as_str()));
        details.insert("distance_km".into(), json!(distance.round()));
        details.insert("elapsed_secs".into(), json!(elapsed_ms / 1000));
        details.insert("speed_kmh".into(), json!(speed.round()));
        details.insert("max_speed_kmh".into(), json!(self.max_speed_kmh));
        Some(Finding {
            identity: who.key.to_string(),
            app_id: who.app_id(),
            score,
            window_start: last.t.min(event.time),
            window_end: window_end(last.t.max(event.time)),
            summary: format!(
                "{who} was seen in {} at {} and in {} at {}: {distance:.0} km in {} min ({speed:.0} km/h, over the {:.0} km/h limit).",
                last.r.describe(),
                rfc3339(last.t),
                place.region.describe(),
                rfc3339(event.time),
                (elapsed_ms as f64 / 60_000.0).round(),
                self.max_speed_kmh,
            ),
            evidence: Evidence {
                observed: json!(place.region.name()),
                baseline: json!(last.r.name()),
                details,
                samples: vec![first, second],
            },
            sql_filter: String::new(),
            raise: 0,
            variant: "impossible_travel",
        })
    }
}

/// Names the identity in summaries.
struct Who<'a> {
    key: &'a str,
    app_id: Option<&'a str>,
}

impl Who<'_> {
    fn app_id(&self) -> Option<String> {
        self.app_id.map(str::to_string)
    }
}

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.app_id {
            Some(id) => write!(f, "App {id}"),
            None => write!(f, "Identity {}", self.key),
        }
    }
}

impl Detector for TokenRegion {
    fn store(&self) -> &dyn StateStore {
        &self.map
    }

    fn store_mut(&mut self) -> &mut dyn StateStore {
        &mut self.map
    }

    fn observe(&mut self, event: &NormalizedEvent, cx: &Context<'_>, out: &mut Vec<Finding>) {
        let Some(identity) = &event.identity else {
            return;
        };
        if identity.status == IdentityStatus::Anonymous {
            return;
        }
        // A gateway request is a use of the app's credential when the gateway
        // authenticated its caller (a Kong consumer, a mesh peer identity); a
        // request known only by its address says nothing about a credential.
        let gateway_use = event.category == Category::EgressRequest;
        if gateway_use
            && event.actor.refs.first().map(|r| r.kind) != Some(PrincipalKind::GatewayConsumer)
        {
            return;
        }
        // Nothing can be said, or remembered, about an event that cannot be placed.
        let Some(place) = self.locator.locate(event) else {
            return;
        };
        let app = match (identity.status, &identity.app_id) {
            (IdentityStatus::Registered, Some(id)) => cx.registry.app(id).map(|a| &**a),
            _ => None,
        };
        let who = Who {
            key: &identity.key,
            app_id: identity.app_id.as_deref(),
        };
        let now = event.time;
        let params = &self.params;
        let ttl = Duration::seconds(params.token_ttl_secs.min(i64::MAX as u64 / 1000) as i64);
        let state = self.map.entry(&identity.key, now);
        state.tokens.retain(|i| now - i.t <= ttl);

        let issued = event.token_id.as_deref().and_then(|token| {
            let h = token_hash(token);
            state
                .tokens
                .iter()
                .rev()
                .find(|i| i.h == h)
                .map(|i| (token, i))
        });
        let mut finding = None;
        if let Some((token, issued)) = issued
            && issued.r.differs(&place.region) == Some(true)
            && !params.exempt(app, &issued.r, &place.region)
        {
            finding = Some(params.region_mismatch(event, &who, token, issued, &place));
        }
        // A gateway call names no token, so it is compared with every token of the
        // identity still alive: used from none of the regions they were issued in.
        if finding.is_none()
            && gateway_use
            && issued.is_none()
            && let Some(latest) = state.tokens.back()
            && state
                .tokens
                .iter()
                .all(|i| i.r.differs(&place.region) == Some(true))
            && !params.exempt(app, &latest.r, &place.region)
        {
            finding = Some(params.gateway_away_from_issuance(event, &who, latest, &place));
        }
        if finding.is_none()
            && let Some(app) = app
            && allowed_in(app, &place.region) == Some(false)
        {
            finding = Some(params.outside_allowed(event, &who, app, &place));
        }
        if finding.is_none()
            && event.category != Category::TokenIssuance
            && let (Some(last), Some(here)) = (&state.last, place.coords)
        {
            finding = params.impossible_travel(event, &who, app, last, &place, here);
        }
        out.extend(finding);

        let addr = src_addr(event);
        // A failed issuance issued nothing: no token to remember.
        if event.category == Category::TokenIssuance
            && event.outcome != Outcome::Failure
            && let Some(token) = event.issued_token_id.as_deref()
        {
            let h = token_hash(token);
            state.tokens.retain(|i| i.h != h);
            while state.tokens.len() >= params.max_tokens_per_identity {
                state.tokens.pop_front();
            }
            state.tokens.push_back(Issued {
                h,
                t: now,
                r: place.region.clone(),
                ip: addr,
            });
        }
        if let Some(at) = place.coords
            && state.last.as_ref().is_none_or(|l| l.t <= now)
        {
            state.last = Some(Seen {
                t: now,
                r: place.region,
                at,
                ip: addr,
                ev: EventRef::of(event),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::detect::kinds::testing::{self, monday, registered};
    use crate::event::Product;
    use crate::identity::Registry;

    const REGISTRY: &str = r#"
apps:
  - id: billing-sync
    name: Billing sync
    owner: alice@example.com
    risk_tier: internal
    identities:
      role_arns: ["arn:aws:iam::111122223333:role/billing-sync"]
    allowed_regions: [us-east-1, US]
    registered_on: 2026-09-01
  - id: eu-agent
    name: EU agent
    owner: bob@example.com
    risk_tier: restricted
    allowed_regions: [eu-west-1, DE, IE]
    registered_on: 2026-09-01
  - id: free-bot
    name: Free bot
    owner: carol@example.com
    risk_tier: public
    registered_on: 2026-09-01
"#;

    fn geoip_fixture(name: &str) -> String {
        format!("{}/tests/fixtures/geoip/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn default_spec() -> DetectorSpec {
        testing::spec("off_region_token.toml")
    }

    fn spec_with(edit: impl FnOnce(&mut toml::Table)) -> DetectorSpec {
        let mut spec = default_spec();
        edit(&mut spec.params);
        spec
    }

    fn set(params: &mut toml::Table, key: &str, value: impl Into<toml::Value>) {
        params.insert(key.to_string(), value.into());
    }

    fn cidr_map(params: &mut toml::Table, entries: &[(&str, &str)]) {
        let map: toml::Table = entries
            .iter()
            .map(|(k, v)| (k.to_string(), toml::Value::String(v.to_string())))
            .collect();
        params.insert("cidr_regions".into(), toml::Value::Table(map));
    }

    struct Harness {
        registry: Registry,
        spec: DetectorSpec,
        detector: Box<dyn Detector>,
    }

    impl Harness {
        fn new(spec: DetectorSpec) -> Harness {
            Harness::with_cap(spec, 1000)
        }

        fn with_cap(spec: DetectorSpec, max_identities: usize) -> Harness {
            Harness {
                registry: testing::registry(REGISTRY),
                detector: build(&spec, max_identities).unwrap(),
                spec,
            }
        }

        /// Feeds one event as the engine would (only when it passes the filter).
        fn feed(&mut self, event: &NormalizedEvent) -> Vec<Finding> {
            let mut out = Vec::new();
            if self.spec.filter.matches(event) {
                let cx = Context {
                    registry: &self.registry,
                    watermark: event.time,
                    spec: &self.spec,
                };
                self.detector.observe(event, &cx, &mut out);
            }
            assert!(out.len() <= 1, "one finding per event at most");
            out
        }

        fn feed_all(&mut self, events: &[NormalizedEvent]) -> Vec<Finding> {
            events.iter().flat_map(|e| self.feed(e)).collect()
        }
    }

    fn variants(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.variant).collect()
    }

    /// `secs` seconds after 10:00 UTC on [`monday`].
    fn t(secs: i64) -> DateTime<Utc> {
        monday() + Duration::hours(10) + Duration::seconds(secs)
    }

    fn event(
        app: &str,
        secs: i64,
        product: Product,
        category: Category,
        activity: &str,
    ) -> NormalizedEvent {
        let mut e = NormalizedEvent::new(t(secs), product, category, activity);
        e.identity = Some(registered(app));
        e.vendor_event_id = Some(format!("{activity}-{secs}"));
        e
    }

    fn assume_role(app: &str, secs: i64, key: &str, region: &str) -> NormalizedEvent {
        let mut e = event(
            app,
            secs,
            Product::Cloudtrail,
            Category::TokenIssuance,
            "AssumeRole",
        );
        e.issued_token_id = Some(key.to_string());
        e.cloud_region = Some(region.to_string());
        e
    }

    fn get_secret(app: &str, secs: i64, key: &str, region: &str, ip: &str) -> NormalizedEvent {
        let mut e = event(
            app,
            secs,
            Product::Cloudtrail,
            Category::SecretRead,
            "GetSecretValue",
        );
        e.token_id = Some(key.to_string());
        e.cloud_region = Some(region.to_string());
        e.src_ip = Some(ip.to_string());
        e
    }

    fn okta_token(
        app: &str,
        secs: i64,
        ip: Option<&str>,
        country: Option<&str>,
    ) -> NormalizedEvent {
        let activity = "app.oauth2.as.token.grant.access_token";
        let mut e = event(app, secs, Product::Okta, Category::TokenIssuance, activity);
        e.issued_token_id = Some(format!("AT.{app}.{secs}"));
        e.src_ip = ip.map(str::to_string);
        e.src_country = country.map(str::to_string);
        e
    }

    fn sign_in(app: &str, secs: i64, country: &str) -> NormalizedEvent {
        let mut e = event(
            app,
            secs,
            Product::Okta,
            Category::Authentication,
            "user.session.start",
        );
        e.src_country = Some(country.to_string());
        e
    }

    fn vault(
        app: &str,
        secs: i64,
        category: Category,
        accessor: &str,
        ip: &str,
    ) -> NormalizedEvent {
        let mut e = event(app, secs, Product::Vault, category, "vault");
        match category {
            Category::TokenIssuance => e.issued_token_id = Some(accessor.to_string()),
            _ => e.token_id = Some(accessor.to_string()),
        }
        e.src_ip = Some(ip.to_string());
        e
    }

    fn gateway_call(app: &str, secs: i64, consumer: Option<&str>, ip: &str) -> NormalizedEvent {
        let mut e = event(app, secs, Product::Kong, Category::EgressRequest, "GET");
        if let Some(consumer) = consumer {
            e.actor.push(PrincipalKind::GatewayConsumer, consumer);
        }
        e.actor.push(PrincipalKind::SourceIp, ip);
        e.src_ip = Some(ip.to_string());
        e.dst_host = Some("api.partner.example".into());
        e
    }

    #[test]
    fn gateway_calls_are_credential_uses_checked_against_where_tokens_were_issued() {
        let spec =
            spec_with(|p| cidr_map(p, &[("198.51.100.0/24", "US"), ("203.0.113.0/24", "AU")]));
        let mut h = Harness::new(spec);
        // Tokens issued at home (US); the app's consumer calls from home, then from AU for 30 minutes.
        assert!(
            h.feed(&okta_token("free-bot", 0, None, Some("US")))
                .is_empty()
        );
        let home = gateway_call("free-bot", 60, Some("free-bot"), "198.51.100.7");
        assert!(
            h.feed(&home).is_empty(),
            "a call from where the token was issued"
        );
        let away: Vec<NormalizedEvent> = (0..30)
            .map(|m| gateway_call("free-bot", 600 + m * 60, Some("free-bot"), "203.0.113.9"))
            .collect();
        let found = h.feed_all(&away);
        assert!(!found.is_empty(), "30 minutes of calls from AU raise it");
        assert!(
            found.iter().all(|f| f.variant == "gateway_off_region"),
            "{:?}",
            variants(&found)
        );
        let f = &found[0];
        assert_eq!(f.raise, 1);
        assert_eq!(f.evidence.baseline, json!("US"));
        assert_eq!(f.evidence.observed, json!("AU"));
        assert!(f.summary.contains("API gateway"), "{}", f.summary);

        // A request known only by its address is no credential use.
        let mut h = Harness::new(spec_with(|p| cidr_map(p, &[("203.0.113.0/24", "AU")])));
        assert!(
            h.feed(&okta_token("free-bot", 0, None, Some("US")))
                .is_empty()
        );
        assert!(
            h.feed(&gateway_call("free-bot", 600, None, "203.0.113.9"))
                .is_empty()
        );
    }

    #[test]
    fn a_failed_issuance_leaves_no_token_to_hide_calls_behind() {
        let spec =
            spec_with(|p| cidr_map(p, &[("198.51.100.0/24", "US"), ("203.0.113.0/24", "AU")]));
        let mut h = Harness::new(spec);
        assert!(
            h.feed(&okta_token("free-bot", 0, None, Some("US")))
                .is_empty()
        );
        // A denied token request from AU issued nothing; calls from AU still have
        // no token issued there.
        let mut denied = okta_token("free-bot", 300, None, Some("AU"));
        denied.outcome = Outcome::Failure;
        h.feed(&denied);
        let away: Vec<NormalizedEvent> = (0..30)
            .map(|m| gateway_call("free-bot", 600 + m * 60, Some("free-bot"), "203.0.113.9"))
            .collect();
        assert!(
            !h.feed_all(&away).is_empty(),
            "calls from AU raise it although a token was refused there"
        );
    }

    #[test]
    fn default_file_parses_with_the_documented_filter() {
        let spec = default_spec();
        assert_eq!(spec.kind, crate::detect::Kind::TokenRegion);
        assert_eq!(spec.filter.categories.len(), 6);
        assert!(spec.filter.categories.contains(&Category::EgressRequest));
        assert_eq!(
            spec.filter.statuses,
            vec![IdentityStatus::Registered, IdentityStatus::Unregistered]
        );
        let params: Params = spec.params().unwrap();
        let defaults: Params = toml::from_str("").unwrap();
        assert_eq!(params, defaults, "the file states the defaults");
        assert!(
            crate::detect::kinds::build(&spec, 10).is_ok(),
            "registered in kinds::build"
        );
    }

    #[test]
    fn sts_key_used_from_another_region_is_a_region_mismatch() {
        let mut h = Harness::new(default_spec());
        let key = "ASIAEXAMPLEKEY000001";
        assert!(
            h.feed(&assume_role("billing-sync", 0, key, "us-east-1"))
                .is_empty()
        );
        let found = h.feed(&get_secret(
            "billing-sync",
            300,
            key,
            "ap-southeast-2",
            "203.0.113.50",
        ));
        assert_eq!(variants(&found), ["region_mismatch"]);
        let f = &found[0];
        assert_eq!(f.identity, "app:billing-sync");
        assert_eq!(f.app_id.as_deref(), Some("billing-sync"));
        assert_eq!(f.raise, 1);
        assert_eq!(f.window_start, t(0));
        assert!(f.window_end > t(300) && f.window_end < t(301));
        assert!(f.score > 95.0 && f.score <= 100.0, "{}", f.score);
        assert_eq!(f.evidence.observed, json!("ap-southeast-2"));
        assert_eq!(f.evidence.baseline, json!("us-east-1"));
        assert_eq!(f.evidence.details["token_id"], json!(key));
        assert_eq!(f.evidence.details["src_ip"], json!("203.0.113.50"));
        assert_eq!(f.evidence.details["observed_country"], json!("AU"));
        assert!(f.evidence.details["distance_km"].as_f64().unwrap() > 15_000.0);
        assert_eq!(f.evidence.samples.len(), 2);
        assert_eq!(f.evidence.samples[0].time, t(0));
        assert_eq!(
            f.evidence.samples[1].vendor_event_id.as_deref(),
            Some("GetSecretValue-300")
        );
        assert!(f.summary.contains("App billing-sync"), "{}", f.summary);
        assert!(f.summary.contains("ap-southeast-2 (AU)"), "{}", f.summary);
        assert!(
            f.summary
                .contains("issued in us-east-1 (US) at 2026-11-23T10:00:00Z"),
            "{}",
            f.summary
        );
        let alert = f.clone().into_alert(
            "off_region_token",
            "token_region",
            crate::detect::Severity::Medium,
            None,
        );
        assert_eq!(alert.severity, crate::detect::Severity::High);
        assert!(
            alert.sql.ends_with(&format!(
                "AND (token_id = '{key}' OR issued_token_id = '{key}') ORDER BY time"
            )),
            "{}",
            alert.sql
        );
    }

    #[test]
    fn same_key_in_its_home_region_is_quiet() {
        let mut h = Harness::new(default_spec());
        let key = "ASIAEXAMPLEKEY000002";
        let mut events = vec![assume_role("billing-sync", 0, key, "us-east-1")];
        events.extend(
            (1..20).map(|k| get_secret("billing-sync", k * 60, key, "us-east-1", "10.20.0.7")),
        );
        events.push(okta_token(
            "billing-sync",
            1300,
            Some("10.20.0.7"),
            Some("US"),
        ));
        assert!(h.feed_all(&events).is_empty());
    }

    #[test]
    fn travelling_within_allowed_regions_is_quiet() {
        // eu-agent may run in eu-west-1, DE and IE: a key from Dublin used in Frankfurt,
        // sign-ins from Germany and Ireland minutes apart are all its normal life.
        let mut h = Harness::new(default_spec());
        let key = "ASIAEXAMPLEKEY000003";
        let events = vec![
            assume_role("eu-agent", 0, key, "eu-west-1"),
            get_secret("eu-agent", 60, key, "eu-central-1", "10.30.0.7"),
            okta_token("eu-agent", 120, Some("198.51.100.7"), Some("DE")),
            get_secret("eu-agent", 180, key, "eu-west-1", "10.30.0.7"),
            sign_in("eu-agent", 240, "Germany"),
            sign_in("eu-agent", 300, "ie"),
            get_secret("eu-agent", 360, key, "eu-central-1", "10.30.0.7"),
        ];
        assert!(h.feed_all(&events).is_empty());
        // The same moves alert once the exemption is switched off.
        let mut strict = Harness::new(spec_with(|p| set(p, "alert_within_allowed_regions", true)));
        let found = strict.feed_all(&events);
        assert!(
            variants(&found).contains(&"region_mismatch"),
            "{:?}",
            variants(&found)
        );
        assert!(
            variants(&found).contains(&"impossible_travel"),
            "{:?}",
            variants(&found)
        );
    }

    #[test]
    fn okta_token_from_a_country_outside_the_allowed_regions() {
        let mut h = Harness::new(default_spec());
        let found = h.feed(&okta_token(
            "billing-sync",
            0,
            Some("203.0.113.50"),
            Some("AU"),
        ));
        assert_eq!(variants(&found), ["outside_allowed"]);
        let f = &found[0];
        assert_eq!(f.raise, 0);
        assert_eq!(f.evidence.observed, json!("AU"));
        assert_eq!(f.evidence.baseline, json!(["us-east-1", "US"]));
        assert_eq!(f.evidence.details["region_source"], json!("src_country"));
        assert_eq!(
            f.sql_filter,
            "(token_id = 'AT.billing-sync.0' OR issued_token_id = 'AT.billing-sync.0')"
        );
        assert!(
            f.summary
                .contains("was issued token AT.billing-sync.0 from AU"),
            "{}",
            f.summary
        );
        assert!(
            f.summary
                .contains("outside its allowed regions (us-east-1, US)"),
            "{}",
            f.summary
        );
        // Okta writes country names: the same grant with "Australia".
        let found = h.feed(&okta_token(
            "billing-sync",
            60,
            Some("203.0.113.50"),
            Some("Australia"),
        ));
        assert_eq!(variants(&found), ["outside_allowed"]);
        // From home it is fine, also as a country name.
        assert!(
            h.feed(&okta_token(
                "billing-sync",
                3 * 3600,
                None,
                Some("United States")
            ))
            .is_empty()
        );
        // A cloud region of the allowed country is allowed (us-west-2 is in the US).
        let k = "ASIAEXAMPLEKEY000004";
        assert!(
            h.feed(&assume_role("billing-sync", 4 * 3600, k, "us-west-2"))
                .is_empty()
        );
        // One that is not, is not.
        let found = h.feed(&assume_role("billing-sync", 5 * 3600, "ASIAX", "eu-west-1"));
        assert_eq!(variants(&found), ["outside_allowed"]);
    }

    #[test]
    fn apps_without_allowed_regions_are_not_checked() {
        let mut h = Harness::new(default_spec());
        assert!(
            h.feed(&okta_token("free-bot", 0, Some("203.0.113.50"), Some("AU")))
                .is_empty()
        );
        assert!(
            h.feed(&okta_token("free-bot", 7200, Some("192.0.2.1"), Some("BR")))
                .is_empty()
        );
    }

    #[test]
    fn us_then_au_ten_minutes_apart_is_impossible_travel() {
        let mut h = Harness::new(default_spec());
        assert!(h.feed(&sign_in("free-bot", 0, "US")).is_empty());
        let found = h.feed(&sign_in("free-bot", 600, "AU"));
        assert_eq!(variants(&found), ["impossible_travel"]);
        let f = &found[0];
        assert_eq!(f.window_start, t(0));
        assert_eq!(f.evidence.observed, json!("AU"));
        assert_eq!(f.evidence.baseline, json!("US"));
        let distance = f.evidence.details["distance_km"].as_f64().unwrap();
        assert!((13_000.0..16_000.0).contains(&distance), "{distance}");
        let speed = f.evidence.details["speed_kmh"].as_f64().unwrap();
        assert!(speed > 50_000.0, "{speed}");
        assert_eq!(f.evidence.samples.len(), 2);
        assert_eq!(f.evidence.samples[0].time, t(0));
        assert!(f.summary.contains("in 10 min"), "{}", f.summary);
        assert_eq!(f.score, 100.0);
    }

    #[test]
    fn the_same_hop_a_day_apart_is_quiet() {
        let mut h = Harness::new(default_spec());
        assert!(h.feed(&sign_in("free-bot", 0, "US")).is_empty());
        assert!(h.feed(&sign_in("free-bot", 86_400, "AU")).is_empty());
        // Nor does a token issuance count as the second leg: only uses do.
        assert!(
            h.feed(&okta_token("free-bot", 86_460, None, Some("US")))
                .is_empty()
        );
        // Nor does a country and its own cloud region (centroid vs data centre).
        assert!(
            h.feed(&get_secret(
                "free-bot",
                86_470,
                "K",
                "us-east-1",
                "10.0.0.1"
            ))
            .is_empty()
        );
    }

    #[test]
    fn vault_regions_come_from_the_cidr_map() {
        let spec = spec_with(|p| {
            cidr_map(
                p,
                &[
                    ("10.20.0.0/16", "us-east-1"),
                    ("10.20.99.0/24", "eu-west-1"),
                    ("203.0.113.0/24", "au"),
                    ("2001:db8:a0::/48", "AU"),
                ],
            )
        });
        let mut h = Harness::new(spec);
        let accessor = "hmac-sha256:aaaa";
        assert!(
            h.feed(&vault(
                "billing-sync",
                0,
                Category::TokenIssuance,
                accessor,
                "10.20.3.4"
            ))
            .is_empty()
        );
        assert!(
            h.feed(&vault(
                "billing-sync",
                60,
                Category::SecretRead,
                accessor,
                "10.20.3.5"
            ))
            .is_empty()
        );
        let found = h.feed(&vault(
            "billing-sync",
            120,
            Category::SecretRead,
            accessor,
            "203.0.113.9",
        ));
        assert_eq!(variants(&found), ["region_mismatch"]);
        assert_eq!(
            found[0].evidence.details["region_source"],
            json!("cidr_regions")
        );
        assert_eq!(found[0].evidence.baseline, json!("us-east-1"));
        // Longest prefix wins; IPv6 and IPv4-mapped addresses are looked up too.
        let locator = Locator::new(&h.spec.params().unwrap(), &h.spec).unwrap();
        let at = |ip: &str| {
            locator
                .cidr(ip.parse::<IpAddr>().unwrap().to_canonical())
                .cloned()
        };
        assert_eq!(at("10.20.99.1"), Some(Region::Cloud("eu-west-1".into())));
        assert_eq!(at("10.20.98.1"), Some(Region::Cloud("us-east-1".into())));
        assert_eq!(at("2001:db8:a0::1"), Some(Region::Country("AU".into())));
        assert_eq!(
            at("::ffff:203.0.113.200"),
            Some(Region::Country("AU".into()))
        );
        assert_eq!(at("10.21.0.1"), None);
        assert_eq!(at("2001:db8:a1::1"), None);
    }

    #[test]
    fn events_without_a_region_are_quiet_and_not_remembered() {
        let mut h = Harness::new(default_spec());
        let accessor = "hmac-sha256:bbbb";
        // No cloud region, no country, a private address and no map: nowhere.
        assert!(
            h.feed(&vault(
                "billing-sync",
                0,
                Category::TokenIssuance,
                accessor,
                "10.20.3.4"
            ))
            .is_empty()
        );
        let mut unknown = okta_token("billing-sync", 10, Some("not-an-ip"), Some("Atlantis"));
        unknown.src_country = Some("ZZ".into());
        assert!(h.feed(&unknown).is_empty());
        assert!(
            h.feed(&vault(
                "billing-sync",
                60,
                Category::SecretRead,
                accessor,
                "203.0.113.9"
            ))
            .is_empty()
        );
        assert_eq!(h.detector.tracked(), 0);
        // A cloud region the tables do not know is compared with cloud regions only.
        let key = "ASIAEXAMPLEKEY000005";
        assert!(
            h.feed(&assume_role("free-bot", 100, key, "xx-mars-1"))
                .is_empty()
        );
        assert!(h.feed(&sign_in("free-bot", 110, "AU")).is_empty());
        let found = h.feed(&get_secret("free-bot", 120, key, "xx-venus-2", "10.0.0.1"));
        assert_eq!(variants(&found), ["region_mismatch"]);
    }

    #[test]
    fn geoip_lookups_in_both_layouts() {
        for (file, field, precise) in [
            ("test-geoip2.mmdb", "country.iso_code", true),
            ("test-flat-country.mmdb", "country_code", false),
        ] {
            let spec = spec_with(|p| {
                set(p, "geoip_database", geoip_fixture(file));
                set(p, "geoip_country_field", field);
            });
            let params: Params = spec.params().unwrap();
            let locator = Locator::new(&params, &spec).unwrap();
            let place = |ip: &str| {
                let mut e = okta_token("billing-sync", 0, Some(ip), None);
                e.src_country = None;
                locator.locate(&e)
            };
            for (ip, country) in [
                ("192.0.2.10", "US"),
                ("198.51.100.10", "DE"),
                ("203.0.113.50", "AU"),
                ("::ffff:203.0.113.50", "AU"),
                ("2001:db8:de::1", "DE"),
            ] {
                let p = place(ip).unwrap_or_else(|| panic!("{file}: {ip}"));
                assert_eq!(p.region, Region::Country(country.into()), "{file}: {ip}");
                assert_eq!(p.source, Source::Geoip);
            }
            assert_eq!(place("10.1.1.1"), None, "{file}");
            let sydney = place("203.0.113.50").unwrap().coords.unwrap();
            if precise {
                assert!(
                    (sydney.0 + 33.87).abs() < 0.01 && (sydney.1 - 151.21).abs() < 0.01,
                    "{sydney:?}"
                );
            } else {
                assert_eq!(
                    Some(sydney),
                    Region::Country("AU".into()).coords(),
                    "centroid"
                );
            }
            // End to end: an Okta grant without a country, placed by GeoIP.
            let mut h = Harness::new(spec);
            let mut e = okta_token("billing-sync", 0, Some("203.0.113.50"), None);
            e.src_country = None;
            let found = h.feed(&e);
            assert_eq!(variants(&found), ["outside_allowed"], "{file}");
            assert_eq!(found[0].evidence.details["region_source"], json!("geoip"));
        }
        // The wrong field for the layout finds nothing rather than failing.
        let spec = spec_with(|p| {
            set(p, "geoip_database", geoip_fixture("test-flat-country.mmdb"));
        });
        let locator = Locator::new(&spec.params().unwrap(), &spec).unwrap();
        let mut e = okta_token("billing-sync", 0, Some("203.0.113.50"), None);
        e.src_country = None;
        assert_eq!(locator.locate(&e), None);
    }

    #[test]
    fn geoip_readers_are_shared_between_shards() {
        let spec = spec_with(|p| set(p, "geoip_database", geoip_fixture("test-geoip2.mmdb")));
        let params: Params = spec.params().unwrap();
        let a = Locator::new(&params, &spec).unwrap();
        let b = Locator::new(&params, &spec).unwrap();
        let (a, b) = (a.geoip.unwrap(), b.geoip.unwrap());
        assert!(Arc::ptr_eq(&a.reader, &b.reader));
    }

    #[test]
    fn bad_params_name_their_key() {
        let error = |edit: fn(&mut toml::Table)| match build(&spec_with(edit), 10) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        };
        let e = error(|p| cidr_map(p, &[("10.0.0.0/33", "us-east-1")]));
        assert_eq!(e.key, "params.cidr_regions.\"10.0.0.0/33\"");
        assert!(e.message.contains("between 0 and 32"), "{e}");
        let e = error(|p| cidr_map(p, &[("10.0.0.0.0/8", "us-east-1")]));
        assert_eq!(e.key, "params.cidr_regions.\"10.0.0.0.0/8\"");
        let e = error(|p| cidr_map(p, &[("10.20.1.0/16", "us-east-1")]));
        assert!(e.message.contains("did you mean `10.20.0.0/16`"), "{e}");
        let e = error(|p| cidr_map(p, &[("2001:db8::/200", "DE")]));
        assert!(e.message.contains("between 0 and 128"), "{e}");
        let e = error(|p| cidr_map(p, &[("10.0.0.0/8", "eu west 1")]));
        assert_eq!(e.key, "params.cidr_regions.\"10.0.0.0/8\"");
        assert!(e.message.contains("neither a cloud region"), "{e}");
        let e = error(|p| set(p, "geoip_database", "/nonexistent/GeoLite2-City.mmdb"));
        assert_eq!(e.key, "params.geoip_database");
        assert!(e.message.contains("/nonexistent/GeoLite2-City.mmdb"), "{e}");
        let e = error(|p| {
            set(
                p,
                "geoip_database",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            )
        });
        assert_eq!(e.key, "params.geoip_database");
        assert!(e.message.contains("not a MaxMind-format database"), "{e}");
        let e = error(|p| set(p, "geoip_country_field", "country..iso_code"));
        assert_eq!(e.key, "params.geoip_country_field");
        let e = error(|p| set(p, "max_speed_kmh", 0.0));
        assert_eq!(e.key, "params.max_speed_kmh");
        let e = error(|p| set(p, "min_distance_km", -1.0));
        assert_eq!(e.key, "params.min_distance_km");
        let e = error(|p| set(p, "max_tokens_per_identity", 0));
        assert_eq!(e.key, "params.max_tokens_per_identity");
        let e = error(|p| set(p, "token_ttl_secs", 5));
        assert_eq!(e.key, "params.token_ttl_secs");
        let e = error(|p| set(p, "max_speed_kph", 900.0));
        assert_eq!(e.key, "params");
        assert!(e.message.contains("max_speed_kph"), "{e}");
    }

    #[test]
    fn save_then_load_behaves_the_same() {
        let key = "ASIAEXAMPLEKEY000006";
        let before = [
            assume_role("billing-sync", 0, key, "us-east-1"),
            get_secret("billing-sync", 30, key, "us-east-1", "10.20.0.7"),
            sign_in("free-bot", 40, "US"),
        ];
        let after = [
            get_secret("billing-sync", 300, key, "ap-southeast-2", "203.0.113.50"),
            sign_in("free-bot", 400, "AU"),
        ];
        let mut original = Harness::new(default_spec());
        original.feed_all(&before);
        let saved = original.detector.save();
        assert_eq!(saved.len(), 2);
        let mut restored = Harness::new(default_spec());
        for (k, v) in saved.clone() {
            restored.detector.load(k, v).unwrap();
        }
        assert_eq!(restored.detector.save(), saved);
        let a = original.feed_all(&after);
        let b = restored.feed_all(&after);
        assert_eq!(variants(&a), ["region_mismatch", "impossible_travel"]);
        let summaries = |f: &[Finding]| {
            f.iter()
                .map(|f| (f.summary.clone(), f.evidence.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(summaries(&a), summaries(&b));
        assert_eq!(original.detector.save(), restored.detector.save());
        assert!(
            restored
                .detector
                .load("x".into(), json!({"seen": 1}))
                .is_err()
        );
    }

    #[test]
    fn caps_are_respected() {
        let mut h = Harness::with_cap(spec_with(|p| set(p, "max_tokens_per_identity", 3)), 2);
        for k in 0..5 {
            h.feed(&assume_role(
                "free-bot",
                k,
                &format!("ASIAKEY{k}"),
                "us-east-1",
            ));
        }
        // The two oldest keys were forgotten; the newest three are still compared.
        // (us-west-2: another cloud region of the same country, so no travel either.)
        assert!(
            h.feed(&get_secret(
                "free-bot",
                10,
                "ASIAKEY0",
                "us-west-2",
                "10.0.0.1"
            ))
            .is_empty()
        );
        assert!(
            h.feed(&get_secret(
                "free-bot",
                20,
                "ASIAKEY1",
                "us-west-2",
                "10.0.0.1"
            ))
            .is_empty()
        );
        let found = h.feed(&get_secret(
            "free-bot",
            30,
            "ASIAKEY2",
            "us-west-2",
            "10.0.0.1",
        ));
        assert_eq!(variants(&found), ["region_mismatch"]);
        let saved = h.detector.save();
        assert_eq!(saved[0].1["state"]["tokens"].as_array().unwrap().len(), 3);
        // Tokens expire by event time.
        let found = h.feed(&get_secret(
            "free-bot",
            13 * 3600,
            "ASIAKEY4",
            "eu-west-1",
            "10.0.0.1",
        ));
        assert!(found.is_empty(), "{:?}", variants(&found));
        // Identities are capped too.
        for app in ["billing-sync", "eu-agent", "free-bot"] {
            h.feed(&sign_in(app, 14 * 3600, "IE"));
        }
        assert_eq!(h.detector.tracked(), 2);
        assert_eq!(h.detector.evict_idle(t(14 * 3600 + 1)), 2);
        assert_eq!(h.detector.tracked(), 0);
    }

    #[test]
    fn an_identity_state_stays_small() {
        // A busy hour: an Okta grant, an STS key and sixty reads with it.
        let mut h = Harness::new(default_spec());
        h.feed(&okta_token(
            "billing-sync",
            0,
            Some("10.20.0.7"),
            Some("US"),
        ));
        h.feed(&assume_role(
            "billing-sync",
            1,
            "ASIAEXAMPLEKEY000007",
            "us-east-1",
        ));
        for k in 0..60 {
            h.feed(&get_secret(
                "billing-sync",
                2 + k * 60,
                "ASIAEXAMPLEKEY000007",
                "us-east-1",
                "10.20.0.7",
            ));
        }
        let saved = h.detector.save();
        let bytes = serde_json::to_string(&saved[0].1).unwrap().len();
        assert!(bytes < 1024, "{bytes} bytes: {}", saved[0].1);
        // A full token list stays within a few KiB.
        let mut full = Harness::new(default_spec());
        for k in 0..100 {
            full.feed(&assume_role(
                "billing-sync",
                k,
                &format!("ASIAEXAMPLEKEY{k:06}"),
                "us-east-1",
            ));
        }
        let saved = full.detector.save();
        assert_eq!(saved[0].1["state"]["tokens"].as_array().unwrap().len(), 64);
        let bytes = serde_json::to_string(&saved[0].1).unwrap().len();
        assert!(bytes < 8 * 1024, "{bytes} bytes");
    }

    #[test]
    fn regions_compare_like_with_like() {
        let cloud = |s: &str| Region::Cloud(s.into());
        let country = |s: &str| Region::Country(s.into());
        assert_eq!(cloud("us-east-1").differs(&cloud("us-east-1")), Some(false));
        assert_eq!(cloud("us-east-1").differs(&cloud("us-west-2")), Some(true));
        assert_eq!(country("DE").differs(&country("DE")), Some(false));
        assert_eq!(cloud("eu-central-1").differs(&country("DE")), Some(false));
        assert_eq!(country("AU").differs(&cloud("eu-central-1")), Some(true));
        assert_eq!(cloud("xx-mars-1").differs(&country("DE")), None);
        // Stored names round-trip to the same kind of region.
        for r in [cloud("us-east-1"), country("AU"), cloud("me-south-1")] {
            let stored = serde_json::to_value(&r).unwrap();
            assert_eq!(serde_json::from_value::<Region>(stored).unwrap(), r);
        }
        assert_eq!(country_code(" gb "), Some("GB".into()));
        assert_eq!(country_code("The Netherlands"), Some("NL".into()));
        assert_eq!(country_code("Korea, Republic of"), Some("KR".into()));
        assert_eq!(country_code("Atlantis"), None);
        assert_eq!(country_code("XX"), None);
        let d = distance_km(
            cloud("eu-west-1").coords().unwrap(),
            cloud("eu-central-1").coords().unwrap(),
        );
        assert!((1000.0..1150.0).contains(&d), "Dublin-Frankfurt {d}");
    }

    #[test]
    fn generated_traffic_alerts_only_on_the_off_region_incident() {
        use crate::decode::{DecodeOptions, Format, decode};
        use crate::generator::{IncidentKind, World, WorldConfig};
        use crate::identity::Resolver;

        let world = World::new(WorldConfig {
            apps: 12,
            hours: 8,
            ..WorldConfig::default()
        });
        let registry = Registry::build(world.registry(), "generated").unwrap();
        let spec = default_spec();
        let mut detector = build(&spec, 10_000).unwrap();
        let mut resolver = Resolver::new(100_000);
        let mut findings = Vec::new();
        let mut events = Vec::new();
        for record in world.records().iter().filter(|r| !r.malformed) {
            events.clear();
            if decode(
                Format::Auto,
                &record.payload,
                &DecodeOptions::default(),
                &mut events,
            )
            .is_err()
            {
                continue;
            }
            for event in &mut events {
                resolver.resolve(&registry, event);
                if spec.filter.matches(event) {
                    let cx = Context {
                        registry: &registry,
                        watermark: event.time,
                        spec: &spec,
                    };
                    detector.observe(event, &cx, &mut findings);
                }
            }
        }
        let incident = world
            .incidents
            .iter()
            .find(|i| i.kind == IncidentKind::OffRegionToken)
            .unwrap();
        for f in &findings {
            assert_eq!(f.identity, incident.identity, "{}", f.summary);
            assert!(f.window_end >= incident.start, "{}", f.summary);
            assert!(f.window_start <= incident.end, "{}", f.summary);
        }
        let kinds = variants(&findings);
        assert!(kinds.contains(&"outside_allowed"), "{kinds:?}");
        assert!(kinds.contains(&"region_mismatch"), "{kinds:?}");
    }
}
