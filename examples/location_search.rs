//! Location search: Location, Organization and Search domains.
//!
//! 1. **location** receives `location.address_changed` (an organization moved) and geocodes the
//!    address with a small built-in gazetteer (`location.geocoded`);
//! 2. **organization** updates the organization's coordinates (`organization.location_updated`);
//! 3. **search** updates its spatial index (`search.index_updated`) and answers proximity
//!    queries by great-circle (haversine) distance.
//!
//! ```text
//! cargo run --example location_search
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example location_search
//! ```

#[path = "support/mod.rs"]
mod support;

use cim_integrate::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Audit, Error, short};

typed_id! {
    /// An organization.
    pub struct OrganizationId;
}

#[domain_event(subject = "location.address_changed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct AddressChanged {
    pub organization_id: OrganizationId,
    pub address: String,
}

#[domain_event(subject = "location.geocoded", version = "1.0")]
#[derive(Debug, Clone)]
pub struct Geocoded {
    pub organization_id: OrganizationId,
    pub place: String,
    pub latitude: f64,
    pub longitude: f64,
}

#[domain_event(subject = "organization.location_updated", version = "1.0")]
#[derive(Debug, Clone)]
pub struct OrganizationLocationUpdated {
    pub organization_id: OrganizationId,
    pub name: String,
    pub latitude: f64,
    pub longitude: f64,
}

#[domain_event(subject = "search.index_updated", version = "1.0")]
#[derive(Debug, Clone)]
pub struct SearchIndexUpdated {
    pub organization_id: OrganizationId,
    pub indexed: usize,
}

// ---- location: geocoding -------------------------------------------------------------------

/// A small gazetteer: place name -> (latitude, longitude) in degrees.
const GAZETTEER: &[(&str, f64, f64)] = &[
    ("berlin", 52.5200, 13.4050),
    ("hamburg", 53.5511, 9.9937),
    ("munich", 48.1351, 11.5820),
    ("cologne", 50.9375, 6.9603),
    ("frankfurt", 50.1109, 8.6821),
    ("bremen", 53.0793, 8.8017),
    ("hanover", 52.3759, 9.7320),
    ("kiel", 54.3233, 10.1228),
    ("leipzig", 51.3397, 12.3731),
    ("stuttgart", 48.7758, 9.1829),
];

/// Geocodes an address by the first gazetteer place it names (`"Jungfernstieg 1, 20354 Hamburg"`).
pub fn geocode(address: &str) -> Option<(&'static str, f64, f64)> {
    let words: Vec<String> = address
        .split(|c: char| !c.is_alphabetic())
        .map(str::to_lowercase)
        .collect();
    GAZETTEER
        .iter()
        .find(|(place, _, _)| words.iter().any(|w| w == place))
        .copied()
}

struct LocationService;

#[handlers(domain = "location")]
impl LocationService {
    #[subscribe("location.address_changed")]
    async fn geocode(&self, ctx: &Context, event: AddressChanged) -> Result<(), HandlerError> {
        let (place, latitude, longitude) = geocode(&event.address)
            .ok_or_else(|| HandlerError::permanent(format!("no gazetteer entry for `{}`", event.address)))?;
        ctx.publish(&Geocoded {
            organization_id: event.organization_id,
            place: place.into(),
            latitude,
            longitude,
        })
        .await?;
        Ok(())
    }
}

// ---- organization --------------------------------------------------------------------------

struct OrganizationService {
    names: HashMap<OrganizationId, String>,
}

#[handlers(domain = "organization")]
impl OrganizationService {
    #[subscribe("location.geocoded")]
    async fn move_organization(&self, ctx: &Context, event: Geocoded) -> Result<(), HandlerError> {
        let name = self
            .names
            .get(&event.organization_id)
            .cloned()
            .ok_or_else(|| HandlerError::permanent(format!("unknown organization {}", event.organization_id)))?;
        let e = OrganizationLocationUpdated {
            organization_id: event.organization_id,
            name,
            latitude: event.latitude,
            longitude: event.longitude,
        };
        ctx.publish(&e).await?;
        Ok(())
    }
}

// ---- search: spatial index -----------------------------------------------------------------

/// Great-circle distance in kilometres (haversine, mean Earth radius 6371.0088 km).
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0088 * h.sqrt().asin()
}

/// One indexed organization: name, latitude, longitude.
type Entry = (String, f64, f64);

/// The search domain's read model: organization -> its entry.
#[derive(Default, Clone)]
pub struct SpatialIndex {
    entries: Arc<Mutex<HashMap<OrganizationId, Entry>>>,
}

impl SpatialIndex {
    /// Organizations within `radius_km` of `center`, nearest first.
    pub fn near(&self, center: (f64, f64), radius_km: f64) -> Vec<(String, f64)> {
        let mut hits: Vec<(String, f64)> = self
            .entries
            .lock()
            .unwrap()
            .values()
            .map(|(name, lat, lon)| (name.clone(), haversine_km(center, (*lat, *lon))))
            .filter(|(_, d)| *d <= radius_km)
            .collect();
        hits.sort_by(|a, b| a.1.total_cmp(&b.1));
        hits
    }
}

struct SearchService {
    index: SpatialIndex,
}

#[handlers(domain = "search")]
impl SearchService {
    #[subscribe("organization.location_updated")]
    async fn reindex(&self, ctx: &Context, event: OrganizationLocationUpdated) -> Result<(), HandlerError> {
        let indexed = {
            let mut entries = self.index.entries.lock().unwrap();
            entries.insert(event.organization_id, (event.name, event.latitude, event.longitude));
            entries.len()
        };
        ctx.publish(&SearchIndexUpdated {
            organization_id: event.organization_id,
            indexed,
        })
        .await?;
        Ok(())
    }
}

async fn run<T: Transport>(t: T) -> Result<Vec<(String, f64)>, Error> {
    let domains = ["location", "organization", "search"];
    let audit = Audit::new(&domains);
    let index = SpatialIndex::default();
    // The index already knows some organizations (earlier conversations).
    let mut names = HashMap::new();
    for (name, city) in [
        ("Nordwind GmbH", "kiel"),
        ("Hafenlogistik AG", "bremen"),
        ("Alpenbau KG", "munich"),
    ] {
        let id = OrganizationId::new();
        let (_, lat, lon) = geocode(city).ok_or("gazetteer")?;
        index.entries.lock().unwrap().insert(id, (name.to_owned(), lat, lon));
        names.insert(id, name.to_owned());
    }
    let mover = OrganizationId::new();
    names.insert(mover, "Elbe Software GmbH".to_owned());
    let service = Service::builder(t.clone(), "locations")
        .register(LocationService)
        .register(OrganizationService { names })
        .register(SearchService { index: index.clone() })
        .register(audit.clone())
        .start()
        .await?;

    let moved = AddressChanged {
        organization_id: mover,
        address: "Jungfernstieg 7, 20354 Hamburg".into(),
    };
    println!("organization {} moves to {:?}", short(mover), moved.address);
    t.publish_and_wait(moved.to_envelope()?.into()).await?;
    audit.wait_for("search.index_updated", Duration::from_secs(10)).await?;
    service.shutdown(Duration::from_secs(5)).await;

    let (_, lat, lon) = geocode("hamburg").ok_or("gazetteer")?;
    let hits = index.near((lat, lon), 150.0);
    println!("organizations within 150 km of Hamburg:");
    for (name, km) in &hits {
        println!("  {name:<20} {km:>6.1} km");
    }
    Ok(hits)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let transport = AnyTransport::from_env().await?;
    println!("location search on the {} transport", transport.kind());
    run(transport).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(hits: &[(String, f64)]) {
        let names: Vec<&str> = hits.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Elbe Software GmbH", "Nordwind GmbH", "Hafenlogistik AG"]);
        assert!(hits[0].1 < 1.0, "the moved organization is in Hamburg");
    }

    #[test]
    fn haversine_matches_known_distances() {
        let berlin = (52.5200, 13.4050);
        let munich = (48.1351, 11.5820);
        let d = haversine_km(berlin, munich);
        assert!((d - 504.4).abs() < 2.0, "{d}");
        assert_eq!(haversine_km(berlin, berlin), 0.0);
        assert!(geocode("Somewhere, Atlantis").is_none());
    }

    #[tokio::test]
    async fn finds_nearby_organizations_on_the_embedded_transport() {
        check(&run(MemoryTransport::new()).await.expect("run"));
    }

    #[tokio::test]
    async fn finds_nearby_organizations_on_nats_with_identity_headers() {
        support::run_on_nats_checking_headers(&["location", "organization", "search"], |t| async move {
            check(&run(t).await?);
            Ok(())
        })
        .await;
    }
}
